"""The text a run reads: real text (embedded KJV, hub datasets, local files), seeded splits and token blocks
(``sources``; ``blocks``: tokens, blocks, windows), and a synthetic source whose distribution is known (``synthetic``).

Token ids stay token ids from here on: nothing downstream decodes and re-tokenizes to count. May import
config, errors, io, metrics (counts and buckets), seeding; never models, the loop or tracking.
"""

from __future__ import annotations

from collapse.data.blocks import (
                                  RealData,
                                  concat_blocks,
                                  flat_ids,
                                  measure_docs,
                                  measure_windows,
                                  real_data,
                                  save_split_ids,
                                  split_ids,
                                  split_label,
                                  tokenize,
)
from collapse.data.sources import LOCAL_SUFFIXES, SPLITS, Splits, kjv_path, load_kjv, load_splits

__all__ = ["LOCAL_SUFFIXES", "SPLITS", "RealData", "Splits", "concat_blocks", "flat_ids", "kjv_path", "load_kjv",
           "load_splits", "measure_docs", "measure_windows", "real_data", "save_split_ids", "split_ids", "split_label",
           "tokenize"]
