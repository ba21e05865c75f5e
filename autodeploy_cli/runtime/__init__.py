"""The built-in runtime: sequence info, KV page manager, scheduler, sampler, engine and `ad run`.

Nothing is imported here; import the submodules (torch is heavy and `ad --help` must stay fast).
"""
