"""Privacy primitives for the ``histogram`` strategy: pure helpers, no party or coordinator code.

- :mod:`fedmine.privacy.secure_agg`: pairwise additive masks mod 2**64 (the coordinator sees sums only);
- :mod:`fedmine.privacy.dp`: gradient bounds, Skellam noise shares, calibration;
- :mod:`fedmine.privacy.accountant`: epsilon spent, on Google's ``dp_accounting``;
- :mod:`fedmine.privacy.budget`: a DP training's releases, each kind's noise and share, calibrated once;
- :mod:`fedmine.privacy.receipt`: the loggable record of a training's privacy.

Submodules are imported explicitly; importing this package loads none of them.
See docs/privacy.md for the threat model.
"""
