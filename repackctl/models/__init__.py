"""Diffusion Transformers (DiT / SiT / LightningDiT, text-conditioned MMDiT) and the REPA projector.

Pure network code: no files, caches or data. ``variants`` holds the registered sizes
(``MODEL_FACTORIES``), ``dit`` the one configurable network, ``layers`` its building blocks,
``mmdit`` the text-conditioned joint-attention network with its own size table
(``MMDIT_FACTORIES``) and ``repa`` the alignment projector and loss.

Shape legend used in every comment of this package (einops style):

    B  batch                  C  latent channels (input / output of the DiT)
    T  tokens = (h/p)·(w/p)   h, w  latent height / width, p patch size
    D  width (hidden size)    H  attention heads, Dh = D / H per head
    F  MLP hidden width       E  encoder token width (REPA target)
    L  text tokens            E_t  text feature width (MMDiT input)
"""
