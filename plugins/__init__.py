"""featsurv's built-in plugins, installed as the package ``featsurv_plugins``.

Each module is an ordinary plugin, found through the ``featsurv`` entry-point group exactly as
a third-party plugin would be.
"""
