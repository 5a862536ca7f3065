"""The downstream tasks: the one registry of what each task feeds, learns, scores and reads.

A *task* is what the encoder is fine-tuned on (the paper's three: PI-RADS classification,
lesion segmentation, gland-volume regression). Everything that depends on the task reads it
from :data:`TASKS`: the input channels (fine-tuning, embeddings), the label it needs (the cohort
check that skips a task without labels), the head and loss (its ``kind``), the metrics of
Table 2, and the radiomics ROIs whose lens reports the study writes.

==========  ==============  ==============  =================  ==================  =============
task        kind            channels        label              Table 2 metrics     radiomics ROIs
==========  ==============  ==============  =================  ==================  =============
``pirads``  classification  T2W, DWI, ADC   ``pirads_group``   qwk, accuracy       gland
``lesion``  segmentation    T2W, DWI, ADC   ``lesion`` (mask)  dice                gland, lesion
``volume``  regression      T2W             ``gland_volume_ml`` mse, mae_ml        gland
==========  ==============  ==============  =================  ==================  =============

To add a task, add a :class:`Task` here (or call :func:`register_task`); a task of a new
``kind`` also needs its head, loss and metrics in :mod:`radiolens.finetune`.
"""

from __future__ import annotations

from dataclasses import dataclass

from radiolens.errors import EXIT_CODES, UserError
from radiolens.naming import MODALITIES

__all__ = ["KINDS", "REGIMES", "TASKS", "MissingLabelsError", "Task", "get_task", "register_task"]

#: Fine-tuning regimes: the head only on a frozen encoder, or encoder and head together.
REGIMES: tuple[str, ...] = ("frozen", "full")
#: What a task learns; each kind has its head, loss and metrics in :mod:`radiolens.finetune`.
KINDS: tuple[str, ...] = ("classification", "segmentation", "regression")


class MissingLabelsError(UserError, ValueError):
    """A task's labels are absent from the cohort (the study skips the task with a warning).

    Attributes
    ----------
    task, column
        The task and the manifest column (or mask key) it needs.
    """

    exit_code = EXIT_CODES["cohort"]

    def __init__(self, task: str, column: str, detail: str = ""):
        self.task, self.column = task, column
        msg = f"task {task!r} needs labels in column {column!r}, but the cohort has none"
        super().__init__(msg + (f" ({detail})" if detail else ""))


@dataclass(frozen=True)
class Task:
    """One downstream task.

    Parameters
    ----------
    name
        The task's name (config ``finetune.tasks``, report names).
    channels
        The modalities the encoder sees, in channel order.
    kind
        ``"classification"``, ``"segmentation"`` or ``"regression"``: decides the head, the loss
        and the metrics. None for a task radiolens only compares and never trains (an encoder
        fine-tuned elsewhere, e.g. on a task of its own).
    label
        The manifest column holding the target, or the mask key for segmentation.
    metrics
        The test metrics reported in Table 2 (computed per kind by :mod:`radiolens.finetune`).
    validation_metric, higher_is_better
        The metric recorded per epoch in the training history, and its direction.
    rois
        The radiomics ROIs whose lens reports the study writes for this task.
    n_classes
        Classes of a classification task (labels ``0 .. n_classes - 1``).
    unit
        Unit of a regression target (names the absolute-error metric, e.g. ``mae_ml``).
    title
        How reports name the task.
    short_title
        How a sentence names the task before a metric (``"PI-RADS kappa"``); default ``name``.
    """

    name: str
    channels: tuple[str, ...]
    kind: str | None = None
    label: str | None = None
    metrics: tuple[str, ...] = ()
    validation_metric: str | None = None
    higher_is_better: bool = True
    rois: tuple[str, ...] = ("gland",)
    n_classes: int | None = None
    unit: str | None = None
    title: str = ""
    short_title: str = ""

    def __post_init__(self) -> None:
        unknown = [c for c in self.channels if c not in MODALITIES]
        if not self.channels or unknown:
            raise ValueError(f"task {self.name!r}: channels {list(self.channels)} must be some of {list(MODALITIES)}")
        if self.kind is None:
            return
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name!r}: kind {self.kind!r} is not one of {list(KINDS)}")
        if not self.label or not self.metrics or not self.validation_metric:
            raise ValueError(f"task {self.name!r}: a trainable task needs a label, metrics and a validation_metric")
        if self.kind == "classification" and not (self.n_classes and self.n_classes >= 2):
            raise ValueError(f"task {self.name!r}: a classification task needs n_classes >= 2")

    @property
    def trainable(self) -> bool:
        """Whether radiolens can fine-tune an encoder on this task (it has a kind and a label)."""
        return self.kind is not None

    def check_labels(self, cohort) -> None:
        """Raise :class:`MissingLabelsError` when ``cohort`` has no label for this task.

        A segmentation task needs at least one case with a mask; the others a manifest column
        that is not entirely empty.
        """
        if not self.trainable:
            raise MissingLabelsError(self.name, "-", "the task has no label radiolens could train on")
        manifest = cohort.manifest
        if self.kind == "segmentation":
            column = manifest[self.label] if self.label in manifest.columns else None
            present = column is not None and bool((column.notna() & (column.astype(str).str.strip() != "")).any())
            if not present:
                raise MissingLabelsError(self.name, self.label, f"no case has a {self.label} mask")
            return
        if self.label not in manifest.columns:
            raise MissingLabelsError(self.name, self.label, "the column is absent")
        if manifest[self.label].isna().all():
            raise MissingLabelsError(self.name, self.label, "every value is empty")


#: The registry: every task radiolens can fine-tune and study, by name.
TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add (or replace) a task in :data:`TASKS`; returns it."""
    TASKS[task.name] = task
    return task


def get_task(name: str | Task) -> Task:
    """The registered task of this name (a :class:`Task` is returned as it is).

    Raises
    ------
    ValueError
        Naming the registered tasks.
    """
    if isinstance(name, Task):
        return name
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown task {name!r}; choose one of {list(TASKS)}") from None


register_task(Task(
    name="pirads", kind="classification", channels=("T2W", "DWI", "ADC"), label="pirads_group",
    metrics=("qwk", "accuracy"), validation_metric="qwk", n_classes=4,
    title="PI-RADS group classification", short_title="PI-RADS",
))
register_task(Task(
    name="lesion", kind="segmentation", channels=("T2W", "DWI", "ADC"), label="lesion",
    metrics=("dice",), validation_metric="dice", rois=("gland", "lesion"),
    title="lesion segmentation",
))
register_task(Task(
    name="volume", kind="regression", channels=("T2W",), label="gland_volume_ml",
    metrics=("mse", "mae_ml"), validation_metric="mse", higher_is_better=False, unit="ml",
    title="gland volume regression",
))
