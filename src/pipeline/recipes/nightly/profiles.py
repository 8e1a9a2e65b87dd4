"""Per-user interest profiles: the dynamic interest tracking of the seed design.

A user's interest is the share of each category in their events, each event weighted by 0.5 ** (age / half-life),
age measured back from the newest event in the log (not the wall clock, so a re-run gives the same profile). An
item with several categories splits its weight among them. Drift is the total variation distance to the previous
night's profile: 0 = unchanged, 1 = entirely different categories.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse

from pipeline.data.prepared import PreparedData

SECONDS_PER_DAY = 86_400
SHARE_PREFIX = "share:"


def interest_profiles(data: PreparedData, half_life_days: float, top_n: int, previous: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per user: events, newest event, top categories, a share column per category, drift since `previous`."""
    events = data.events
    timestamps = events["timestamp"].to_numpy(dtype=np.float64)
    weights = np.power(0.5, (timestamps.max() - timestamps) / (half_life_days * SECONDS_PER_DAY))
    user_items = sparse.csr_matrix(
        (weights, (events["user"].to_numpy(), events["item"].to_numpy())), shape=(data.n_users, data.n_items + 1)
    )
    category_weights = np.asarray(user_items @ data.category_matrix())
    totals = category_weights.sum(axis=1, keepdims=True)
    shares = np.divide(category_weights, totals, out=np.zeros_like(category_weights), where=totals > 0)

    names = np.array(data.category_names, dtype=object)
    order = np.argsort(-shares, axis=1, kind="stable")[:, :top_n]
    top = ["|".join(names[row][shares[user, row] > 0]) for user, row in enumerate(order)]
    per_user = events.groupby("user")["timestamp"].agg(["size", "max"])
    profiles = pd.DataFrame(
        {
            "user_id": data.user_ids,
            "events": per_user["size"].to_numpy(),
            "last_event": pd.to_datetime(per_user["max"].to_numpy(), unit="s", utc=True),
            "top_categories": top,
        }
    )
    share_columns = pd.DataFrame(shares, columns=[SHARE_PREFIX + name for name in data.category_names])
    profiles = pd.concat([profiles, share_columns], axis=1)
    return _with_drift(profiles, previous)


def _with_drift(profiles: pd.DataFrame, previous: pd.DataFrame | None) -> pd.DataFrame:
    """Add `drift` (total variation distance) and `top_changed` against `previous`; both empty for new users."""
    if previous is None or previous.empty:
        return profiles.assign(new_user=True, drift=np.nan, top_changed=pd.NA)
    share_names = sorted({c for c in profiles.columns if c.startswith(SHARE_PREFIX)} | {c for c in previous.columns if c.startswith(SHARE_PREFIX)})
    now = profiles.reindex(columns=share_names, fill_value=0.0).to_numpy()
    before_frame = previous.set_index("user_id").reindex(profiles["user_id"])
    seen_before = before_frame["top_categories"].notna().to_numpy()
    before = before_frame.reindex(columns=share_names).fillna(0.0).to_numpy()
    drift = np.where(seen_before, 0.5 * np.abs(now - before).sum(axis=1), np.nan)
    first_now = profiles["top_categories"].str.split("|").str[0]
    first_before = before_frame["top_categories"].str.split("|").str[0].to_numpy()
    top_changed = pd.array(np.where(seen_before, first_now.to_numpy() != first_before, pd.NA), dtype="boolean")
    return profiles.assign(new_user=~seen_before, drift=drift, top_changed=top_changed)


def profile_summary(profiles: pd.DataFrame, top_n: int = 5) -> dict:
    """What the night summary says about interests: overall category shares and how much users moved."""
    shares = profiles[[c for c in profiles.columns if c.startswith(SHARE_PREFIX)]].mean().sort_values(ascending=False)
    returning = profiles[~profiles["new_user"]]
    return {
        "users": int(len(profiles)),
        "new_users": int(profiles["new_user"].sum()),
        "top_categories": {name.removeprefix(SHARE_PREFIX): round(float(value), 4) for name, value in shares.head(top_n).items()},
        "mean_drift": None if returning.empty else round(float(returning["drift"].mean()), 4),
        "users_top_category_changed": int(returning["top_changed"].sum()) if not returning.empty else 0,
    }
