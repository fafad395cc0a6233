__version__ = "0.0.1"

import warnings

# Lightning's CombinedLoader flattens whatever it is given (one DataLoader included) with `LeafSpec()`, which torch >= 2.9
# deprecates: the FutureWarning came on every run, from inside Lightning, whatever clarena passes it. Only that warning, only there.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning,
                        module=r"lightning\.pytorch\.utilities\._pytree")
