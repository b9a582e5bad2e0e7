"""Every dtype and record layout of the GBDT engine, each with its reason.

The engine moves plain numpy arrays between parties and the coordinator, so the
layouts below are the wire format as much as the in-memory format. Nothing here
computes; the other modules import these names instead of spelling dtypes.
"""

from __future__ import annotations

import numpy as np

#: Raw feature values. float64 because the exported LightGBM model compares the
#: raw double against a double threshold; binning in float64 keeps the engine's
#: ``bin <= b`` and LightGBM's ``value <= threshold`` the same test.
X_DTYPE = np.float64

#: Binned feature values. ``max_bin <= 255`` numeric bins plus the NaN bin fit a
#: byte, which quarters memory traffic against int32 in the histogram kernels.
X_BINNED_DTYPE = np.uint8

#: Largest ``max_bin``: numeric bins are ``0 .. max_bin - 1`` and the NaN bin is
#: ``max_bin`` itself, so 255 keeps every bin inside a uint8.
MAX_BIN_LIMIT = 255

#: Fixed-point gradients, hessians, counts and every histogram entry. Integer
#: sums are associative, so any partition of rows over parties, and any order of
#: summation, gives the same bits (see :mod:`fedmine.gbdt.quantize`).
G_INT_DTYPE = np.int64

#: Row positions inside one party. int32 halves the partition's memory traffic;
#: a party holds fewer than 2**31 rows.
ROW_INDEX_DTYPE = np.int32

#: Global row ids, known to each party for its own rows; bagging hashes them so
#: the same rows are sampled pooled or federated.
ROW_ID_DTYPE = np.uint64

#: Histogram entry layout along the last axis: ``hist[..., GRAD]``,
#: ``hist[..., HESS]``, ``hist[..., COUNT]``. Shape of a batch of node
#: histograms: ``(n_nodes, n_features, max_bin + 1, 3)``, int64.
GRAD, HESS, COUNT = 0, 1, 2
HIST_FIELDS = 3

#: Categorical split sets are bitsets over bins (= category codes). 8 words of
#: 32 bits cover 256 bins; uint32 words are what LightGBM's ``cat_threshold``
#: line holds, so export copies them as they are.
CAT_WORDS = 8
CAT_BITSET_DTYPE = np.uint32

#: One node of a tree, internal or leaf. A tree is a flat array of these, root at
#: index 0, children appended in split order: plain data that serialises with
#: ``np.save`` and travels between parties without pickling objects.
NODE_DTYPE = np.dtype(
    [
        ("is_leaf", np.uint8),  # 1 for leaves; leaves keep feature = -1
        ("feature", np.int32),  # split feature index, -1 for leaves
        ("bin_threshold", np.int32),  # numeric: rows with bin <= this go left
        ("threshold", np.float64),  # numeric: raw value <= this goes left
        ("default_left", np.uint8),  # where NaN goes (numeric splits)
        ("missing", np.uint8),  # numeric splits: MISSING_NAN (engine trees), MISSING_NONE or MISSING_ZERO
        ("is_categorical", np.uint8),  # 1: categorical split, bitset says left
        ("cat_index", np.int32),  # row of Tree.cat_bitsets, -1 if numeric
        ("left", np.int32),  # child node index, -1 for leaves
        ("right", np.int32),
        ("parent", np.int32),  # -1 for the root
        ("depth", np.int32),  # root has depth 0
        ("split_order", np.int32),  # i-th split of the tree, -1 for leaves
        ("slot", np.int32),  # node id used on the wire while growing (partition segment)
        ("value", np.float64),  # output after shrinkage (leaf: prediction)
        ("count", np.int64),  # rows (in the bag) reaching the node
        ("sum_grad", np.int64),  # fixed-point sums of the node's rows
        ("sum_hess", np.int64),
        ("hess", np.float64),  # sum_hess as a float (LightGBM's weight)
        ("gain", np.float64),  # split gain, 0 for leaves
    ]
)

#: Missing-value rules of a numeric split, LightGBM's missing types. The
#: engine's own trees learn a default side for NaN (MISSING_NAN, 0 so that a
#: zeroed record means it); trees read from a LightGBM model keep LightGBM's
#: rule: MISSING_NONE treats NaN as 0.0, MISSING_ZERO sends 0 (and NaN) to
#: the default side.
MISSING_NAN, MISSING_NONE, MISSING_ZERO = 0, 1, 2

#: LightGBM's ``IsZero`` bound (``kZeroThreshold = 1e-35f``, as a double).
ZERO_THRESHOLD = float(np.float32(1e-35))

#: The best split found for one node, as the coordinator computes it from the
#: summed histograms. ``gain == -inf`` means "no valid split".
SPLIT_DTYPE = np.dtype(
    [
        ("gain", np.float64),
        ("feature", np.int32),
        ("bin_threshold", np.int32),
        ("default_left", np.uint8),
        ("is_categorical", np.uint8),
        ("left_grad", np.int64),
        ("left_hess", np.int64),
        ("left_count", np.int64),
        ("right_grad", np.int64),
        ("right_hess", np.int64),
        ("right_count", np.int64),
        ("left_value", np.float64),  # unshrunk leaf outputs of the children
        ("right_value", np.float64),
    ]
)

#: Scores and predictions. float64 to match LightGBM's raw scores to 1e-9.
Y_DTYPE = np.float64
