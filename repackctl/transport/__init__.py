"""Linear-path flow matching: interpolant, time sampling, loss, ODE/SDE samplers and guidance.

Convention (fixed once for the whole toolkit): t ∈ [0, 1], t = 0 is data, t = 1 is noise,
``x_t = (1 − t)·x + t·ε``, velocity ``v = ε − x``; samplers integrate from t = 1 to t = 0.
SiT, LightningDiT and the official RePack code use the opposite time; ``interpolant`` has the
converters. Everything here is pure tensor code: samplers take any velocity function
``f(x, t, y) -> v``, not a model class.
"""
