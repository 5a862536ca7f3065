"""radiolens: a radiomic lens on how fine-tuning changes a medical foundation model's encoder.

Implements Wang et al., *What Fine-Tuning Changes: A Radiomic Lens on Prostate Foundation Model
Representations*, MIDL 2026. The study's steps are separate modules, in the order data flows:
:mod:`radiolens.data` -> :mod:`radiolens.radiomics` -> :mod:`radiolens.models` ->
:mod:`radiolens.finetune` -> :mod:`radiolens.embeddings` -> :mod:`radiolens.lens` ->
:mod:`radiolens.plotting` / :mod:`radiolens.report`; :mod:`radiolens.pipeline` runs them all.
What they share is defined once, below them: :mod:`radiolens.tasks`, :mod:`radiolens.naming`,
:mod:`radiolens.glossary`, :mod:`radiolens.cache`, :mod:`radiolens.config`.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["LensReport", "RadiomicLens", "__version__"]


def __getattr__(name: str):
    # The lens pulls in torch; import it on first use so `import radiolens` stays light.
    if name in ("RadiomicLens", "LensReport"):
        from radiolens import lens

        return getattr(lens, name)
    raise AttributeError(f"module 'radiolens' has no attribute {name!r}")
