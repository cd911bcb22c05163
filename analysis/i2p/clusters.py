"""The unit that repeats on I2P: the prompt *text*, one helper for every clustered number.

I2P repeats some prompts on several rows (4703 rows, 4467 texts), and the images of one prompt
are alike, so they are not independent. The I2P authors pool by text (``groupby('prompt')``),
and so does every clustered statistic here: Table 1's prompt units and cluster interval, the
attack success rate, the guardrail table's I2P columns and the paired test of i2p_paired.csv.
Defining the key once keeps those numbers counting the same units.
"""

from __future__ import annotations

import pandas as pd

#: what the clusters are, for column and docstring labels
CLUSTER_LABEL = "prompt text"


def cluster_key(frame: pd.DataFrame) -> pd.Series:
    """The cluster of each row: its prompt text, or its prompt id when no text is known.

    The text is taken as written (no stripping or case folding), as the authors' groupby.
    """
    column = "prompt" if "prompt" in frame.columns else "prompt_id"
    return frame[column].astype(str).rename("cluster")
