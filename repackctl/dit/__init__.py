"""Stage 2: a DiT (+ REPA) trained on packed latents; its task, run and loader."""
