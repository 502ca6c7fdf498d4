"""featsurv presets (TOML files in this folder), installed as the package ``featsurv_registry``."""
