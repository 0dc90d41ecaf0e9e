"""Our own sampling core: A1111 1.10's samplers, schedules, denoiser and randomness, no diffusers scheduler.

Layout (one fact per module):
    cond.py               Cond / StepConds: what the CFG denoiser gets per image and per step (contract)
    denoiser.py           DiscreteDenoiser (eps / v-prediction, sigma <-> fractional timestep, c_in),
                          CFGDenoiser (A1111 batching, AND weights, CFG on x0)
    schedules.py          every "Schedule type" as a pure function (n, sigma_min, sigma_max, ...) -> sigmas
    k_samplers.py         Euler ... DPM++ 3M SDE, DPM fast/adaptive, Restart, LCM: fn(model, x, sigmas, ...)
    timestep_samplers.py  DDIM, DDIM CFG++, PLMS, UniPC on integer timesteps (A1111's own loops)
    registry.py           A1111 sampler names, aliases, flags, defaults, Automatic schedule resolution
    rng.py                ImageRNG: CPU / GPU / NV (Philox4x32-10) per-image noise, variation seeds,
                          seed resize, ENSD; BrownianTree noise for SDE samplers; A1111's uint8 conversion
The core never imports gradio and never needs k-diffusion (tests use it as a reference).
"""
