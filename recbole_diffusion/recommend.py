"""Top-k recommendations from a trained checkpoint: the command's ``--recommend``.

``python run_recbole_diffusion.py --recommend --model_file=saved/X.pth
--user_ids=1,2,3 --topk=10`` prints each user's ``k`` best items, as the
tokens of the atomic files, and with ``--output_file=FILE`` writes them as CSV
(``user, rank, item, score``).

The checkpoint must be one written by this plugin's trainer (plugin models and
RecBole's, trained through the run command); it is read with
``weights_only=True`` (:func:`recbole_diffusion.quick_start.load_data_and_model`)
and its dataset is rebuilt from the atomic files with the checkpoint's
settings.

History used for a user: the **full known history**, i.e. every interaction of
the user in the dataset, in time order (its last ``MAX_ITEM_LIST_LENGTH``
items): the user's test row, whose item sequence ends just before the held-out
test item, with the test item appended. The lists are therefore predictions of
the next, not yet seen, interaction, as a deployed recommender would make, not
a replay of the test evaluation (which hides the test item). A user without a
test row (too short a history for the split) uses the last row it has. Scores
come from RecBole's :func:`recbole.utils.case_study.full_sort_scores`; the
padding item is never recommended.

Items the user already has (every interaction of the user in the dataset) are
left out of the list, as RecBole's ``case_study.full_sort_topk`` leaves out a
user's history; ``include_seen=True`` (``--include_seen``) keeps them, for
domains where people re-watch and re-buy. A user who has nearly every item gets
a shorter list rather than items scored minus infinity.

An ADRec checkpoint of stage 1 (``-stage1.pth``, the pre-trained embedding and
CAM) gives recommendations without the diffusion model: it is accepted, with a
warning that names the final checkpoint.
"""

import csv
import os
import types
import warnings

import numpy as np
import torch
from recbole.utils import ModelType

from recbole_diffusion.trainer import CheckpointError, load_checkpoint
from recbole_diffusion.utils import ConfigError

__all__ = ["full_history_rows", "read_user_ids", "recommend"]


def read_user_ids(text):
    """``"1,2, 3"`` -> ``["1", "2", "3"]``; refuse an empty list."""
    ids = [token.strip() for token in str(text).split(",") if token.strip()]
    if not ids:
        raise ConfigError(
            "--user_ids is empty: give user ids as in the atomic file, e.g. --user_ids=1,2,3."
        )
    return ids


def _checkpoint_config(model_file):
    checkpoint = load_checkpoint(model_file)
    stored = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    if not isinstance(stored, dict) or not {"dataset", "external", "model"} <= set(
        stored
    ):
        raise CheckpointError(
            f"Checkpoint '{model_file}' is not a recbole-diffusion checkpoint (it "
            "has no stored configuration). Train the model with the run command "
            "and use the file it writes."
        )
    return stored, checkpoint.get("adrec_stage")


def _user_internal_ids(dataset, user_ids):
    uid_field = dataset.uid_field
    token_to_id = dataset.field2token_id[uid_field]
    unknown = [token for token in user_ids if token not in token_to_id]
    if unknown:
        valid = [token for token in dataset.field2id_token[uid_field][1:6]]
        raise ConfigError(
            f"Unknown user id{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(u) for u in unknown)} in dataset "
            f"'{dataset.dataset_name}' ({dataset.user_num - 1} users). Valid ids "
            f"include: {', '.join(valid)}. Ids are the tokens of the atomic file's "
            f"{uid_field} column."
        )
    return torch.tensor([token_to_id[token] for token in user_ids], dtype=torch.long)


def _last_rows(datasets, uid_field, uids):
    """For each user, the index of its last row in the first dataset that has one."""
    picks = []
    for uid in uids.tolist():
        for split in datasets:
            rows = (split.inter_feat[uid_field] == uid).nonzero(as_tuple=True)[0]
            if len(rows):
                picks.append((split, int(rows[-1])))
                break
        else:  # pragma: no cover - every user of the dataset has a row
            raise ConfigError(f"User {uid} has no interaction left after filtering.")
    return picks


def full_history_rows(config, test_dataset, picks):
    """One row per user: its last row's sequence with the row's own item appended."""
    list_suffix = config["LIST_SUFFIX"]
    length_field = config["ITEM_LIST_LENGTH_FIELD"]
    max_length = config["MAX_ITEM_LIST_LENGTH"]
    uid_field = test_dataset.uid_field
    columns = [test_dataset.iid_field + list_suffix, length_field, uid_field]
    rows = {}
    for split, index in picks:
        row = split.inter_feat[[index]]
        for field in test_dataset.inter_feat.columns:
            rows.setdefault(field, []).append(row[field])
    missing = [field for field in columns if field not in rows]
    if missing:  # pragma: no cover - a sequential dataset always has them
        raise ConfigError(f"The dataset has no {', '.join(missing)} field.")
    inter = {field: torch.cat(values) for field, values in rows.items()}
    length = inter[length_field].clone()
    full = length >= max_length
    for list_field in list(inter):
        base = (
            list_field[: -len(list_suffix)]
            if list_field.endswith(list_suffix)
            else None
        )
        if base is None or base not in inter:
            continue
        sequence = inter[list_field].clone()
        # Full sequences drop their oldest item to make room.
        sequence[full] = torch.roll(sequence[full], shifts=-1, dims=1)
        position = torch.where(full, length - 1, length)
        sequence[torch.arange(len(sequence)), position] = inter[base]
        inter[list_field] = sequence
    inter[length_field] = torch.clamp(length + 1, max=max_length)
    from recbole.data.interaction import Interaction

    return test_dataset.copy(Interaction(inter))


def _seen_items(config, data, uids):
    """(row, item) pairs of every item each user has in the dataset.

    A built sequential dataset holds one row per target with its history list
    (a user's first item appears only in the lists), so both are read.
    """
    feat = data.inter_feat
    row, index = (feat[data.uid_field] == uids[:, None]).nonzero(as_tuple=True)
    rows, items = [row], [feat[data.iid_field][index]]
    list_field = data.iid_field + config["LIST_SUFFIX"]
    if list_field in feat:
        lists = feat[list_field][index]  # [pairs, L], 0 = padding
        rows.append(row[:, None].expand_as(lists).reshape(-1))
        items.append(lists.reshape(-1))
    return torch.cat(rows), torch.cat(items)


def _no_history(test_data):
    """A general model's eval loader whose users have no history to mask."""
    empty = torch.zeros(0, dtype=torch.long)
    histories = np.empty(len(test_data.uid2history_item), dtype=object)
    histories[:] = [empty] * len(histories)
    return types.SimpleNamespace(
        dataset=test_data.dataset, is_sequential=False, uid2history_item=histories
    )


def _stage_warning(model_file, checkpoint_stage):
    if checkpoint_stage != 1:
        return None
    stem = os.path.splitext(str(model_file))[0]
    final = stem[: -len("-stage1")] if stem.endswith("-stage1") else stem
    return (
        f"warning: {model_file} is ADRec's stage-1 checkpoint (pre-trained embedding "
        "and CAM, no diffusion model): its lists are not ADRec's. Use the final "
        f"checkpoint the run reported ({final}.pth or {final}-stage3.pth)."
    )


def recommend(
    model_file, user_ids, topk=10, dataset=None, config_dict=None, include_seen=False
):
    """The top-``topk`` items of each user, from a checkpoint of this plugin.

    Args:
        model_file (str): the checkpoint.
        user_ids (list[str]): user tokens as in the atomic file.
        topk (int): items per user.
        dataset (str): if given, the checkpoint must have been trained on it.
        config_dict (dict): overrides of the checkpoint's settings (e.g.
            ``data_path`` if the data moved, ``gpu_id``).
        include_seen (bool): keep the items the user already has.

    Returns:
        dict: ``users`` (a list of ``{"user", "items", "scores"}``), ``model``,
        ``dataset``, ``uid_field``, ``iid_field`` and ``warnings`` (lines for
        the user, such as an ADRec stage-1 checkpoint).

    Raises:
        CheckpointError: a missing file, or one that cannot be read safely.
        ConfigError: another dataset, an unknown user id, a bad ``topk``.
    """
    from recbole.utils.case_study import full_sort_scores

    from recbole_diffusion.quick_start import load_data_and_model

    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise ConfigError(f"--topk={topk!r} is invalid: give a positive integer.")
    user_ids = list(user_ids)
    if not user_ids:
        raise ConfigError("No user id given: use --user_ids=ID,ID,...")
    stored, checkpoint_stage = _checkpoint_config(model_file)
    if dataset and dataset != stored["dataset"]:
        raise ConfigError(
            f"Checkpoint '{model_file}' was trained on dataset '{stored['dataset']}', "
            f"not '{dataset}': its item and user ids mean nothing on another dataset. "
            f"Use a checkpoint trained on '{dataset}', or leave out --dataset."
        )
    overrides = {"state": "warning"}
    overrides.update(config_dict or {})
    # No log file: a lookup is not a run, and RecBole would leave an empty one.
    # RecBole's data loading warns about its own use of pandas (chained
    # assignment); that says nothing to a user asking for recommendations.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\.")
        config, model, data, train_data, valid_data, test_data = load_data_and_model(
            model_file, config_dict=overrides, log_to_file=False
        )
    n_items = data.item_num - 1  # without the padding item
    if topk > n_items:
        raise ConfigError(
            f"--topk={topk} is more than the {n_items} items of '{stored['dataset']}'."
        )
    uids = _user_internal_ids(data, user_ids)
    if config["MODEL_TYPE"] == ModelType.SEQUENTIAL:
        splits = [test_data._dataset, valid_data._dataset, train_data._dataset]
        picks = _last_rows(splits, data.uid_field, uids)
        history = full_history_rows(config, test_data._dataset, picks)
        source = types.SimpleNamespace(dataset=history, is_sequential=True)
    else:  # RecBole masks a general model's training and validation history
        source = _no_history(test_data) if include_seen else test_data
    scores = full_sort_scores(uids.numpy(), model, source, device=config["device"])
    if not include_seen:
        rows, seen = _seen_items(config, data, uids)
        scores[rows.to(scores.device), seen.to(scores.device)] = -torch.inf
    top_scores, items = torch.topk(scores, topk)
    top_scores, items = top_scores.cpu(), items.cpu()
    tokens = data.id2token(data.iid_field, items)
    users = []
    for row, user in enumerate(user_ids):
        kept = torch.isfinite(top_scores[row])  # -inf: seen or padding
        users.append(
            {
                "user": user,
                "items": [str(t) for t, k in zip(tokens[row], kept) if k],
                "scores": [float(v) for v in top_scores[row][kept]],
            }
        )
    warning = _stage_warning(model_file, checkpoint_stage)
    return {
        "users": users,
        "model": stored.get("model_variant") or stored["model"],
        "dataset": stored["dataset"],
        "uid_field": data.uid_field,
        "iid_field": data.iid_field,
        "warnings": [warning] if warning else [],
    }


def write_csv(path, recommendations):
    """One line per (user, rank): ``<uid_field>,rank,<iid_field>,score``."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                recommendations["uid_field"],
                "rank",
                recommendations["iid_field"],
                "score",
            ]
        )
        for entry in recommendations["users"]:
            for rank, (item, score) in enumerate(
                zip(entry["items"], entry["scores"]), start=1
            ):
                writer.writerow([entry["user"], rank, item, f"{score:.6g}"])
