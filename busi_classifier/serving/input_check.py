"""The input check: how far an image's pooled ResNet50 features lie from the training images.

The served graph gives, with the class probabilities, the pooled features of the image
(the classifier's input, float32 [1, 2048]). ``InputCheck.score`` turns them into one
number, higher = farther from the training images; ``InputCheck.answer`` compares it with
the threshold chosen on validation images and says whether the image looks like the
images the model was trained on. The check is fitted at export
(``busi_classifier.evaluation.input_check_fit``) and written beside the .tflite files as
``input_check.npz``; the card records its sha256 and ``InputCheck.load`` refuses a file
that is missing, unreadable, of another format version, of the wrong shapes, with
non-finite values, of an unknown method or whose sha256 differs: a model load error,
never a silent "no check".

Methods (all in a PCA space of ``dims`` dimensions fitted on the training features):

- ``mahalanobis`` (Lee et al. 2018): the smallest Mahalanobis distance to the class means,
  with one covariance shared by the classes (within-class scatter, Ledoit-Wolf shrunk).
- ``mahalanobis_residual``: the same plus the energy the PCA space leaves out, weighted by
  the training images' own residual variance per left-out dimension (the probabilistic-PCA
  Mahalanobis distance, Tipping & Bishop 1999): an image whose features point where no
  training image's did is far even if its projection is near a class mean (Kamoi &
  Kobayashi 2020 find the minor directions the most telling).
- ``relative_mahalanobis`` (Ren et al. 2021): ``mahalanobis`` minus the Mahalanobis
  distance to one class-agnostic Gaussian of all training images.
- ``knn`` (Sun et al. 2022): the distance to the k-th nearest training image, features
  L2-normalised; the training images are stored in the PCA space with their squared
  residual norms, and the distance adds the residual energies of both (exact where
  ``dims`` reaches the rank of the training features, the cross term dropped otherwise).

File: an .npz (a zip of .npy arrays, written and read without pickle): ``format_version``
(int64), ``method`` and ``threshold_rule`` (unicode strings), ``dims`` (and ``k``: int64),
``threshold`` and ``residual_variance`` (float64 scalars), the arrays float32. The bytes
are deterministic (fixed zip timestamps): the same check gives the same sha256.

NumPy and the standard library only (the serving world).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
FILE = "input_check.npz"
FEATURE_DIM = 2048
METHODS = ("mahalanobis", "mahalanobis_residual", "relative_mahalanobis", "knn")

# The arrays each method needs, beyond mean and projection (which all need).
_METHOD_ARRAYS = {
    "mahalanobis": ("class_means", "precision"),
    "mahalanobis_residual": ("class_means", "precision", "class_residuals", "residual_variance"),
    "relative_mahalanobis": ("class_means", "precision", "background_precision"),
    "knn": ("reference", "reference_residuals", "k"),
}
_OPTIONAL = ("class_means", "precision", "background_precision", "class_residuals", "residual_variance",
             "reference", "reference_residuals", "k")
_FLOAT32_ARRAYS = ("mean", "projection", "class_means", "precision", "background_precision", "class_residuals",
                   "reference", "reference_residuals")
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class InputCheckError(RuntimeError):
    """The input check file is missing, unreadable or does not fit the model: a model load error."""


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True, eq=False)
class InputCheck:
    """A fitted input check (see the module docstring for the methods).

    ``threshold`` is NaN until ``choose_threshold`` sets it; ``answer`` and ``save`` need it.
    The arrays are read-only float32; the scores are float64.
    """

    method: str
    dims: int
    threshold: float
    threshold_rule: str
    mean: np.ndarray  # (feature_dim,) the training features' mean (knn: of the normalised features)
    projection: np.ndarray  # (feature_dim, dims) orthonormal columns: the leading principal axes
    class_means: np.ndarray | None = None  # (classes, dims) in the PCA space
    precision: np.ndarray | None = None  # (dims, dims) inverse of the shared, shrunk covariance
    background_precision: np.ndarray | None = None  # (dims, dims) relative_mahalanobis: all classes as one
    class_residuals: np.ndarray | None = None  # (classes, feature_dim) class means off the PCA space
    residual_variance: float | None = None  # within-class variance per left-out dimension
    reference: np.ndarray | None = None  # (n, dims) knn: the training images in the PCA space
    reference_residuals: np.ndarray | None = None  # (n,) knn: their squared residual norms
    k: int | None = None  # knn: which neighbour
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        for name in _FLOAT32_ARRAYS:
            value = getattr(self, name)
            if value is not None:
                value = np.array(value, dtype=np.float32, copy=True)
                value.setflags(write=False)
                object.__setattr__(self, name, value)
        for name, kind in (("dims", int), ("k", int), ("threshold", float), ("residual_variance", float)):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                object.__setattr__(self, name, kind(value))
        _validate(self)
        # float64 copies of the small arrays, made once (the scores are computed in float64
        # after the one float32 product with the projection)
        for name in ("class_means", "precision", "background_precision", "class_residuals", "reference",
                     "reference_residuals"):
            if getattr(self, name) is not None:
                self._cache[name] = getattr(self, name).astype(np.float64)
        if self.method == "mahalanobis_residual":
            self._cache["projection_t"] = np.ascontiguousarray(self.projection.T.astype(np.float64))
            self._cache["class_residuals_sq"] = (self._cache["class_residuals"] ** 2).sum(axis=1)
        if self.method == "knn":
            self._cache["reference_sq"] = (self._cache["reference"] ** 2).sum(axis=1)

    @property
    def feature_dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def has_threshold(self) -> bool:
        return math.isfinite(self.threshold)

    # ------------------------------------------------------------------ scoring

    def score(self, features: np.ndarray) -> float | np.ndarray:
        """Features (feature_dim,) -> float, or (N, feature_dim) -> (N,) float64: higher = farther."""
        x = np.asarray(features)
        single = x.ndim == 1
        if x.ndim not in (1, 2) or x.shape[-1] != self.feature_dim:
            raise ValueError(f"features of shape {x.shape}: expected ({self.feature_dim},) or (N, {self.feature_dim})")
        x = np.atleast_2d(x).astype(np.float32, copy=False)
        if self.method == "knn":
            norms = np.linalg.norm(x, axis=1, keepdims=True)
            x = x / np.where(norms > 0, norms, 1).astype(np.float32)
        centred = x - self.mean
        z = (centred @ self.projection).astype(np.float64)
        scores = getattr(self, f"_score_{self.method}")(z, centred)
        return float(scores[0]) if single else scores

    def _class_distances(self, z: np.ndarray, precision: np.ndarray) -> np.ndarray:
        diff = z[:, None, :] - self._cache["class_means"][None]  # (N, C, d)
        return ((diff @ precision) * diff).sum(axis=2)

    def _score_mahalanobis(self, z, centred):
        return self._class_distances(z, self._cache["precision"]).min(axis=1)

    def _score_mahalanobis_residual(self, z, centred):
        inside = self._class_distances(z, self._cache["precision"])
        residual = centred.astype(np.float64) - z @ self._cache["projection_t"]  # (N, D)
        outside = ((residual * residual).sum(axis=1)[:, None] - 2 * residual @ self._cache["class_residuals"].T
                   + self._cache["class_residuals_sq"][None]) / self.residual_variance
        return (inside + outside).min(axis=1)

    def _score_relative_mahalanobis(self, z, centred):
        background = ((z @ self._cache["background_precision"]) * z).sum(axis=1)
        return self._class_distances(z, self._cache["precision"]).min(axis=1) - background

    def _score_knn(self, z, centred):
        z_sq = (z * z).sum(axis=1)
        query_residual = np.maximum(np.einsum("nd,nd->n", centred, centred, dtype=np.float64) - z_sq, 0.0)
        squared = (z_sq[:, None] - 2 * z @ self._cache["reference"].T + self._cache["reference_sq"][None]
                   + query_residual[:, None] + self._cache["reference_residuals"][None])
        kth = np.partition(squared, self.k - 1, axis=1)[:, self.k - 1]
        return np.sqrt(np.maximum(kth, 0.0))

    def answer(self, features: np.ndarray) -> dict:
        """One image's features (feature_dim,) -> {"score", "threshold", "in_distribution"}.

        A score above the threshold, or one that is not a number (features with NaN), is flagged.
        """
        if not self.has_threshold:
            raise ValueError("the input check has no threshold yet (choose_threshold sets it)")
        if np.ndim(features) != 1 and not (np.ndim(features) == 2 and np.shape(features)[0] == 1):
            raise ValueError(f"answer takes one image's features, got shape {np.shape(features)}")
        score = self.score(np.asarray(features).reshape(-1))
        return {"score": score, "threshold": self.threshold, "in_distribution": bool(score <= self.threshold)}

    # ------------------------------------------------------------------ file

    def arrays(self) -> dict[str, np.ndarray]:
        """What the file holds, name -> array (the fields the method uses, typed)."""
        out = {"format_version": np.array(FORMAT_VERSION, dtype=np.int64), "method": np.array(self.method),
               "dims": np.array(self.dims, dtype=np.int64), "threshold": np.array(self.threshold, dtype=np.float64),
               "threshold_rule": np.array(self.threshold_rule), "mean": self.mean, "projection": self.projection}
        for name in _METHOD_ARRAYS[self.method]:
            value = getattr(self, name)
            if name == "k":
                value = np.array(value, dtype=np.int64)
            elif name == "residual_variance":
                value = np.array(value, dtype=np.float64)
            out[name] = value
        return out

    def to_bytes(self) -> bytes:
        if not self.has_threshold:
            raise ValueError("the input check has no threshold yet (choose_threshold sets it): nothing to serve")
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
            for name, value in self.arrays().items():
                with archive.open(zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE), "w", force_zip64=True) as out:
                    np.lib.format.write_array(out, np.asarray(value, order="C"), allow_pickle=False)
        return buffer.getvalue()

    def save(self, path: str | os.PathLike) -> str:
        """Write the .npz at ``path`` (the name used as given) and return its sha256."""
        data = self.to_bytes()
        path = Path(path)
        partial = path.with_name(path.name + ".partial")
        partial.write_bytes(data)
        os.replace(partial, path)
        return hashlib.sha256(data).hexdigest()

    @classmethod
    def load(cls, path: str | os.PathLike, expected_sha256: str | None = None,
             feature_dim: int = FEATURE_DIM) -> InputCheck:
        """Read and check the file; any problem raises InputCheckError naming the file and the field."""
        path = Path(path)
        if not path.is_file():
            raise InputCheckError(f"{path}: the input check file is missing (it is written beside the model "
                                  "at export; serving without it is refused)")
        if expected_sha256 is not None:
            actual = file_sha256(path)
            if actual != expected_sha256.lower():
                raise InputCheckError(f"{path}: sha256 {actual} differs from the model card's {expected_sha256} "
                                      "(the file is not the one exported with this model)")
        values = _read_npz(path)
        problem = _check_keys(values)
        if problem:
            raise InputCheckError(f"{path}: {problem}")
        try:
            kwargs = _fields_from_arrays(values, feature_dim)
            return cls(**kwargs)
        except ValueError as error:
            raise InputCheckError(f"{path}: {error}") from None


# ---------------------------------------------------------------------- reading and checking


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    values = {}
    with open(path, "rb") as handle:
        magic = handle.read(6)
    if magic.startswith(b"\x93NUMPY"):
        raise InputCheckError(f"{path}: not an .npz archive (a single .npy array)")
    if not magic.startswith(b"PK"):
        raise InputCheckError(f"{path}: not a readable .npz file (it does not start with the zip signature)")
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise InputCheckError(f"{path}: not an .npz archive")
        with archive:
            for name in archive.files:
                try:
                    values[name] = archive[name]
                except ValueError as error:  # an object array needs pickle: refused
                    raise InputCheckError(f"{path}: field {name!r} cannot be read without pickle ({error})") from None
    except InputCheckError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as error:
        raise InputCheckError(f"{path}: not a readable .npz file (truncated or corrupt: {error})") from None
    return values


def _scalar(values: dict, name: str, kind: str) -> object:
    value = values[name]
    if value.shape != () or value.dtype.kind not in kind:
        raise ValueError(f"field {name!r}: expected a scalar of kind {kind!r}, got dtype {value.dtype} shape {value.shape}")
    return value[()]


def _check_keys(values: dict) -> str | None:
    if "format_version" not in values:
        return "no field 'format_version' (not an input check file)"
    version = values["format_version"]
    if version.shape != () or version.dtype.kind not in "iu":
        return f"field 'format_version' is not an integer scalar (dtype {version.dtype}, shape {version.shape})"
    if int(version) != FORMAT_VERSION:
        return f"field 'format_version' is {int(version)}; this code reads version {FORMAT_VERSION} only"
    if "method" not in values:
        return "no field 'method'"
    method = values["method"]
    if method.shape != () or method.dtype.kind != "U":
        return f"field 'method' is not a string (dtype {method.dtype}, shape {method.shape})"
    if str(method) not in METHODS:
        return f"field 'method' is {str(method)!r}, not one of {', '.join(METHODS)}"
    expected = {"format_version", "method", "dims", "threshold", "threshold_rule", "mean", "projection",
                *_METHOD_ARRAYS[str(method)]}
    missing, unknown = sorted(expected - set(values)), sorted(set(values) - expected)
    if missing:
        return f"missing field(s) {', '.join(missing)} for method {str(method)!r}"
    if unknown:
        return f"unknown field(s) {', '.join(unknown)} for method {str(method)!r} in format version {FORMAT_VERSION}"
    return None


def _fields_from_arrays(values: dict, feature_dim: int) -> dict:
    kwargs = {"method": str(values["method"]), "dims": int(_scalar(values, "dims", "iu")),
              "threshold": float(_scalar(values, "threshold", "f")),
              "threshold_rule": str(_scalar(values, "threshold_rule", "U"))}
    if "k" in values:
        kwargs["k"] = int(_scalar(values, "k", "iu"))
    if "residual_variance" in values:
        kwargs["residual_variance"] = float(_scalar(values, "residual_variance", "f"))
    for name in _FLOAT32_ARRAYS:
        if name in values:
            if values[name].dtype != np.float32:
                raise ValueError(f"field {name!r}: dtype {values[name].dtype}, expected float32")
            kwargs[name] = values[name]
    if kwargs["mean"].shape != (feature_dim,):
        raise ValueError(f"field 'mean': shape {kwargs['mean'].shape}, expected ({feature_dim},): the model's "
                         f"features have {feature_dim} values")
    if not math.isfinite(kwargs["threshold"]):
        raise ValueError(f"field 'threshold' is {kwargs['threshold']} (not set or not finite)")
    return kwargs


def _validate(check: InputCheck) -> None:
    """Shapes, finiteness and the method's own fields; raises ValueError naming the field."""
    if check.method not in METHODS:
        raise ValueError(f"field 'method' is {check.method!r}, not one of {', '.join(METHODS)}")
    needed = set(_METHOD_ARRAYS[check.method])
    for name in _OPTIONAL:
        present = getattr(check, name) is not None
        if name in needed and not present:
            raise ValueError(f"field {name!r} is required by method {check.method!r}")
        if present and name not in needed:
            raise ValueError(f"field {name!r} is not used by method {check.method!r}")
    if check.mean is None or check.mean.ndim != 1 or check.mean.shape[0] < 1:
        raise ValueError("field 'mean': expected a vector of the feature dimension")
    d_features, dims = check.mean.shape[0], check.dims
    if not 1 <= dims <= d_features:
        raise ValueError(f"field 'dims' is {dims}: expected 1..{d_features}")
    shapes = {"projection": (d_features, dims), "precision": (dims, dims), "background_precision": (dims, dims)}
    for name, shape in shapes.items():
        value = getattr(check, name)
        if value is not None and value.shape != shape:
            raise ValueError(f"field {name!r}: shape {value.shape}, expected {shape}")
    if check.class_means is not None and (check.class_means.ndim != 2 or check.class_means.shape[1] != dims
                                          or check.class_means.shape[0] < 1):
        raise ValueError(f"field 'class_means': shape {check.class_means.shape}, expected (classes >= 1, {dims})")
    if check.class_residuals is not None and check.class_residuals.shape != (check.class_means.shape[0], d_features):
        raise ValueError(f"field 'class_residuals': shape {check.class_residuals.shape}, "
                         f"expected ({check.class_means.shape[0]}, {d_features})")
    if check.reference is not None:
        if check.reference.ndim != 2 or check.reference.shape[1] != dims:
            raise ValueError(f"field 'reference': shape {check.reference.shape}, expected (n, {dims})")
        n = check.reference.shape[0]
        if check.reference_residuals.shape != (n,):
            raise ValueError(f"field 'reference_residuals': shape {check.reference_residuals.shape}, expected ({n},)")
        if not 1 <= check.k <= n:
            raise ValueError(f"field 'k' is {check.k}: expected 1..{n} (the reference images)")
    for name in _FLOAT32_ARRAYS:
        value = getattr(check, name)
        if value is not None and not np.all(np.isfinite(value)):
            raise ValueError(f"field {name!r} holds values that are not finite (NaN or infinity)")
    if check.residual_variance is not None and not (math.isfinite(check.residual_variance)
                                                    and check.residual_variance > 0):
        raise ValueError(f"field 'residual_variance' is {check.residual_variance}: expected a positive number")
    if check.reference_residuals is not None and np.any(check.reference_residuals < 0):
        raise ValueError("field 'reference_residuals' holds negative squared norms")
    for name in ("precision", "background_precision"):
        value = getattr(check, name)
        if value is not None:
            if not np.allclose(value, value.T, rtol=1e-4, atol=1e-6 * float(np.abs(value).max() or 1)):
                raise ValueError(f"field {name!r} is not symmetric")
            try:
                np.linalg.cholesky(value.astype(np.float64))
            except np.linalg.LinAlgError:
                raise ValueError(f"field {name!r} is not positive definite") from None
    if not math.isnan(check.threshold) and not math.isfinite(check.threshold):
        raise ValueError(f"field 'threshold' is {check.threshold}")
    if not isinstance(check.threshold_rule, str):
        raise ValueError("field 'threshold_rule': expected a string")


__all__ = ["FEATURE_DIM", "FILE", "FORMAT_VERSION", "METHODS", "InputCheck", "InputCheckError", "file_sha256"]
