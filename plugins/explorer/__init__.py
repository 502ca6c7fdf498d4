"""Top-activating contexts and the feature explorer (explorer.html, `featsurv features`).

- ``topk``: the streaming per-feature top-k the ``contexts`` metric runs during the FP pass;
- ``page``: the self-contained explorer page built from a finished run;
- ``terminal``: the ``featsurv features`` command.
"""
