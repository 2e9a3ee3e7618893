"""Where a task's data comes from: what a compression document records of it (:class:`fwsvd.config.DataConfig`),
the task such a record names, and how the examples are split between the roles. Both ways of the record:
so that ``fwsvd compress --config FILE`` reads the data the document was made from."""

from __future__ import annotations

from fwsvd.config import DataConfig
from fwsvd.data.tasks import ROLES, Task, get_task, local_task


def task_of_data(data: DataConfig) -> Task:
    """The task ``data`` names: a registered task, or its local files with their columns."""
    if data.task is not None:
        return get_task(data.task)
    files = dict(data.data_files or {})
    return local_task(files if len(files) > 1 else files["train"], text_column=data.text_column or "",
                      label_column=data.label_column or "", text_pair_column=data.text_pair_column)


def data_of_task(task: Task) -> DataConfig:
    """What a document records of ``task``: its registered name, or its local files (absolute paths) and
    columns. Local files split by other fractions or seed than the defaults cannot be recorded: ValueError."""
    if task.source != "local":
        return DataConfig(task=task.name)
    defaults = local_defaults()
    if (task.validation_fraction, task.test_fraction, task.seed) != defaults:
        raise ValueError("a compression document records local data split with the default fractions and seed "
                         f"(validation, test, seed = {defaults}); this task's are "
                         f"{(task.validation_fraction, task.test_fraction, task.seed)}")
    return DataConfig.of_files(dict(task.data_files), task.text_column, task.label_column, task.text_pair_column)


def local_defaults() -> tuple[float, float, int]:
    """local_task's default validation fraction, test fraction and seed."""
    defaults = local_task.__kwdefaults__
    return defaults["validation_fraction"], defaults["test_fraction"], defaults["seed"]


def split_sizes(task: Task) -> dict[str, int]:
    """How many examples each role (train, validation, test) reads."""
    return {role: len(task.load_split(role)) for role in ROLES}


def carved_roles(task: Task) -> tuple[str, ...]:
    """The roles cut out of the training data at random (with ``task.seed``) rather than read from a file or
    split of their own: a local file's missing roles, and the demo's validation and test."""
    if task.source == "hub":
        return ()
    if task.source == "demo":
        return ("validation", "test")
    return tuple(role for role in ROLES if role not in dict(task.data_files))
