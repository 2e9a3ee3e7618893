"""The data a compression document records (:class:`fwsvd.config.DataConfig`) and the task it names, both ways:
so that ``fwsvd compress --config FILE`` reads the data the document was made from."""

from __future__ import annotations

from fwsvd.config import DataConfig
from fwsvd.data.tasks import Task, get_task, local_task


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
