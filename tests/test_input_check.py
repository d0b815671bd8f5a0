"""The input check (serving/input_check.py) and its fitting (evaluation/input_check_fit.py),
on synthetic features shaped like the served graph's: 2048 values per image, three
in-distribution classes, each a Gaussian cluster with low-rank structure (a mean, 8
directions of spread, isotropic noise), and a fourth cluster the check never sees.

What is pinned: in-distribution points score low and off-cluster points high, per method,
for the kinds of difference each method can see; the threshold flags the stated share of
held-out in-distribution points; the file round-trips to identical scores and every kind
of bad file is refused with a message naming the file and the field; the metric and the
covariance estimator agree with brute-force references; degenerate training sets (fewer
images than dimensions, a class absent, constant features) still give a finite check.
"""

import dataclasses
import math
import time
import zipfile

import numpy as np
import pytest

from busi_classifier.evaluation.input_check_fit import (
    DEFAULT_DIMS,
    auroc,
    check_size,
    choose_threshold,
    compare_methods,
    energy_score,
    fit_input_check,
    ledoit_wolf,
    max_softmax_score,
    pca,
    pick_default,
    share_flagged,
    threshold_for,
)
from busi_classifier.serving.input_check import (
    FEATURE_DIM,
    FORMAT_VERSION,
    METHODS,
    InputCheck,
    InputCheckError,
    file_sha256,
)

D = FEATURE_DIM
RANK = 8


class World:
    """Three in-distribution clusters and one held out, in 2048 dimensions."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.means = self.rng.normal(0, 1, (4, D))
        self.bases = self.rng.normal(0, 0.5, (4, D, RANK))

    def draw(self, cluster: int, n: int) -> np.ndarray:
        spread = self.rng.normal(size=(n, RANK)) @ self.bases[cluster].T
        return self.means[cluster] + spread + self.rng.normal(0, 0.3, (n, D))

    def split(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n) % 3
        return np.concatenate([self.draw(c, 1) for c in labels]), labels


@pytest.fixture(scope="module")
def world():
    w = World(0)
    w.train_x, w.train_y = w.split(300)
    w.val_x, _ = w.split(400)
    w.test_x, _ = w.split(400)
    w.ood = {
        "other cluster": w.draw(3, 100),
        "uniform noise": w.rng.uniform(w.train_x.min(), w.train_x.max(), (100, D)),
        "scaled x3": w.test_x[:100] * 3,
        "scaled x0.5": w.test_x[:100] * 0.5,
        "blend of two classes": (w.draw(0, 100) + w.draw(1, 100)) / 2,
        "shifted": w.test_x[:100] + 3 * w.rng.normal(0, 1, D),
    }
    return w


@pytest.fixture(scope="module")
def checks(world):
    """Each method fitted at the default dims, threshold at 5 % of the validation split."""
    return {m: choose_threshold(fit_input_check(world.train_x, world.train_y, method=m), world.val_x)
            for m in METHODS}


# ---------------------------------------------------------------------- in versus out

# The sets each method separates from the test split with AUROC > 0.95 in this world (at
# 32 dims). What each misses is in the method's nature and is what compare_methods measures
# on real images: plain Mahalanobis sees only the PCA space (a point off the clusters whose
# projection lands near a class is missed), relative Mahalanobis cancels a shift that moves
# the class and the background distances alike, the residual term reads less noise than the
# training images had (a blend of two images) as closer, kNN on normalised features is blind
# to scale by construction.
SEPARATED = {
    "mahalanobis": ["scaled x3"],
    "mahalanobis_residual": ["other cluster", "uniform noise", "scaled x3", "shifted"],
    "relative_mahalanobis": ["other cluster", "uniform noise", "scaled x3", "scaled x0.5", "blend of two classes"],
    "knn": ["other cluster", "uniform noise", "blend of two classes", "shifted"],
}


@pytest.mark.parametrize("method,ood_set", [(m, s) for m, sets in SEPARATED.items() for s in sets])
def test_points_off_the_clusters_score_higher_than_held_out_points_from_them(world, checks, method, ood_set):
    check = checks[method]
    value = auroc(check.score(world.test_x), check.score(world.ood[ood_set]))
    assert value > 0.95, f"{method} on {ood_set}: AUROC {value:.3f}"


def test_with_dims_above_the_signal_rank_plain_mahalanobis_sees_off_cluster_points(world):
    """3 classes x (1 mean + 8 directions) = 27 signal dimensions: at 64 the PCA space also
    holds the directions where other points differ."""
    check = fit_input_check(world.train_x, world.train_y, dims=64)
    for name in ("other cluster", "uniform noise", "scaled x3"):
        assert auroc(check.score(world.test_x), check.score(world.ood[name])) > 0.95, name


def test_the_residual_term_sees_what_the_pca_space_leaves_out(world, checks):
    """A point whose projection is exactly a training class mean but which carries energy off
    the PCA space: plain Mahalanobis calls it typical, the residual variant flags it."""
    plain, residual = checks["mahalanobis"], checks["mahalanobis_residual"]
    centre = plain.mean.astype(np.float64) + plain.projection.astype(np.float64) @ plain.class_means[0]
    away = world.rng.normal(size=D)
    away -= plain.projection.astype(np.float64) @ (plain.projection.T.astype(np.float64) @ away)
    point = centre + 20 * away / np.linalg.norm(away)
    assert plain.score(point) < np.median(plain.score(world.test_x))
    assert residual.score(point) > residual.threshold


def test_relative_mahalanobis_is_mahalanobis_minus_the_background_distance(world, checks):
    rel, plain = checks["relative_mahalanobis"], checks["mahalanobis"]
    z = (world.test_x[:20].astype(np.float32) - rel.mean) @ rel.projection
    z = z.astype(np.float64)
    background = np.einsum("nd,de,ne->n", z, rel.background_precision.astype(np.float64), z)
    np.testing.assert_allclose(rel.score(world.test_x[:20]) + background, plain.score(world.test_x[:20]),
                               rtol=1e-6, atol=1e-6)


def test_knn_is_the_brute_force_kth_neighbour_distance_when_dims_reach_the_rank(world):
    """With dims >= n - 1 the PCA space holds the training points exactly: the score is the
    distance to the k-th nearest normalised training feature vector in all 2048 dimensions."""
    x, y = world.train_x[:30], world.train_y[:30]
    check = fit_input_check(x, y, method="knn", dims=64, k=3)
    assert check.dims == 29 and check.k == 3
    queries = np.concatenate([world.test_x[:5], world.ood["other cluster"][:5]])
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    distances = np.linalg.norm(unit(queries)[:, None, :] - unit(x)[None], axis=2)
    np.testing.assert_allclose(check.score(queries), np.sort(distances, axis=1)[:, 2], rtol=1e-4)


def test_knn_on_normalised_features_is_blind_to_scale(world, checks):
    knn = checks["knn"]
    np.testing.assert_allclose(knn.score(world.test_x[:10] * 3), knn.score(world.test_x[:10]), rtol=1e-4)


# ---------------------------------------------------------------------- threshold


def test_the_threshold_flags_the_stated_share_of_held_out_in_distribution_points(world, checks):
    """5 % of the 400 validation points lie above it (exactly 20: the inverted-CDF quantile);
    on 2000 fresh in-distribution points the share is 5 % within 3 binomial standard errors
    (the threshold's own estimate from 400 points included)."""
    fresh, _ = world.split(2000)
    tolerance = 3 * math.sqrt(0.05 * 0.95 * (1 / 400 + 1 / 2000))
    for method, check in checks.items():
        assert int((check.score(world.val_x) > check.threshold).sum()) == 20, method
        rate = share_flagged(check.score(fresh), check.threshold)
        assert abs(rate - 0.05) <= tolerance, f"{method}: {rate:.3f} of fresh in-distribution points flagged"
        assert check.threshold_rule.startswith("the 95th percentile of the 400 validation images' scores: "
                                               "5 % of in-distribution images are flagged"), check.threshold_rule


def test_threshold_for_small_sets_and_bad_rates():
    scores = np.arange(1, 21, dtype=float)  # 20 scores: the 95th percentile flags exactly one
    threshold, rule = threshold_for(scores, 0.05)
    assert threshold == 19 and (scores > threshold).sum() == 1 and "1 of the 20" in rule
    threshold, _ = threshold_for(scores, 0.5)
    assert (scores > threshold).sum() == 10
    for rate in (0, 1, -0.1, 1.5):
        with pytest.raises(ValueError, match="flag_rate"):
            threshold_for(scores, rate)
    with pytest.raises(ValueError, match="not finite"):
        threshold_for([1.0, math.nan], 0.05)


# ---------------------------------------------------------------------- answer and score


def test_score_and_answer_shapes_and_types(world, checks):
    check = checks["mahalanobis"]
    one = world.test_x[0]
    assert isinstance(check.score(one), float)
    batch = check.score(world.test_x[:7])
    assert batch.shape == (7,) and batch.dtype == np.float64
    assert check.score(one) == pytest.approx(batch[0], rel=1e-6)
    answer = check.answer(one.astype(np.float32))
    assert set(answer) == {"score", "threshold", "in_distribution"}
    assert isinstance(answer["score"], float) and isinstance(answer["threshold"], float)
    assert isinstance(answer["in_distribution"], bool)
    assert answer["in_distribution"] == (answer["score"] <= check.threshold)
    assert check.answer(one[None])["score"] == answer["score"]  # the served graph's [1, 2048]
    assert check.answer(world.ood["scaled x3"][0])["in_distribution"] is False
    with pytest.raises(ValueError, match="2048"):
        check.score(np.zeros(1024))
    with pytest.raises(ValueError, match="one image"):
        check.answer(world.test_x[:2])


def test_features_that_are_not_numbers_are_flagged(checks):
    for method, check in checks.items():
        answer = check.answer(np.full(D, np.nan, dtype=np.float32))
        assert answer["in_distribution"] is False, method


def test_a_check_without_threshold_neither_answers_nor_saves(world, tmp_path):
    check = fit_input_check(world.train_x, world.train_y)
    assert math.isnan(check.threshold) and not check.has_threshold
    with pytest.raises(ValueError, match="no threshold"):
        check.answer(world.test_x[0])
    with pytest.raises(ValueError, match="no threshold"):
        check.save(tmp_path / "x.npz")


def test_the_check_is_frozen_and_its_arrays_read_only(checks):
    check = checks["mahalanobis"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        check.threshold = 0.0
    with pytest.raises(ValueError):
        check.precision[0, 0] = 1.0


def test_one_image_costs_well_under_a_millisecond(world, checks):
    """A generous bound only (shared CI machines): ~0.1-0.2 ms measured on 2 busy cores."""
    one = world.test_x[0].astype(np.float32)
    for method, check in checks.items():
        check.answer(one)
        times = []
        for _ in range(30):
            start = time.perf_counter()
            check.answer(one)
            times.append(time.perf_counter() - start)
        assert np.median(times) < 0.01, f"{method}: {np.median(times) * 1e3:.2f} ms per image"


# ---------------------------------------------------------------------- the file


def test_save_and_load_give_identical_scores_and_the_same_bytes(world, checks, tmp_path):
    probe = np.concatenate([world.test_x[:20], world.ood["uniform noise"][:5]])
    for method, check in checks.items():
        path = tmp_path / f"{method}.npz"
        digest = check.save(path)
        assert digest == file_sha256(path) and len(digest) == 64
        loaded = InputCheck.load(path, expected_sha256=digest)
        assert loaded.method == method and loaded.dims == check.dims
        assert loaded.threshold == check.threshold and loaded.threshold_rule == check.threshold_rule
        np.testing.assert_array_equal(loaded.score(probe), check.score(probe))
        assert loaded.answer(probe[0]) == check.answer(probe[0])
        assert loaded.save(tmp_path / f"{method}-again.npz") == digest  # deterministic bytes
        assert InputCheck.load(str(path)).score(probe[0]) == check.score(probe[0])


def test_the_file_is_a_plain_npz_of_typed_arrays(checks, tmp_path):
    path = tmp_path / "input_check.npz"
    checks["mahalanobis"].save(path)
    with np.load(path, allow_pickle=False) as archive:
        assert int(archive["format_version"]) == FORMAT_VERSION
        assert str(archive["method"]) == "mahalanobis" and archive["method"].dtype.kind == "U"
        for name in ("mean", "projection", "class_means", "precision"):
            assert archive[name].dtype == np.float32, name
    assert zipfile.is_zipfile(path)


def test_the_default_file_is_a_few_hundred_kilobytes(checks):
    sizes = {method: check_size(check) for method, check in checks.items()}
    # 2048 x 32 float32 projection = 262 144 bytes, the rest is small (knn: 300 x 32 reference)
    assert sizes["mahalanobis"] < 300_000, sizes
    assert max(sizes.values()) < 400_000, sizes
    assert DEFAULT_DIMS == 32


def _write(path, values: dict):
    with open(path, "wb") as handle:  # np.savez pickles object arrays by default: the attacker's file
        np.savez(handle, **values)
    return path


def _bad_files(check, tmp_path):
    good = check.arrays()
    out = {}

    def variant(name, **changes):
        values = {**good, **changes}
        out[name] = _write(tmp_path / f"{name}.npz", {k: v for k, v in values.items() if v is not None})

    variant("version", format_version=np.array(FORMAT_VERSION + 1, dtype=np.int64))
    variant("version-type", format_version=np.array("1"))
    variant("method", method=np.array("isolation_forest"))
    variant("shape", projection=good["projection"][:, :-1])
    variant("class-shape", class_means=good["class_means"][:, :-1])
    variant("nan", precision=np.where(np.eye(check.dims, dtype=bool), np.float32("nan"), good["precision"]))
    variant("inf-threshold", threshold=np.array(np.inf))
    variant("dtype", mean=good["mean"].astype(np.float64))
    variant("missing-field", precision=None)
    variant("unknown-field", notes=np.array("hello"))
    variant("not-positive-definite", precision=-good["precision"])
    variant("pickle", threshold_rule=np.array([{"a": 1}], dtype=object))
    whole = check.to_bytes()
    (tmp_path / "truncated.npz").write_bytes(whole[: len(whole) // 2])
    out["truncated"] = tmp_path / "truncated.npz"
    (tmp_path / "garbage.npz").write_bytes(b"not a zip at all" * 10)
    out["garbage"] = tmp_path / "garbage.npz"
    np.save(tmp_path / "single.npy", good["mean"])
    out["npy"] = tmp_path / "single.npy"
    return out


REFUSALS = {  # file -> words the message must hold (besides the file's name)
    "version": "format_version",
    "version-type": "format_version",
    "method": "isolation_forest",
    "shape": "projection",
    "class-shape": "class_means",
    "nan": "precision",
    "inf-threshold": "threshold",
    "dtype": "float32",
    "missing-field": "precision",
    "unknown-field": "notes",
    "not-positive-definite": "positive definite",
    "pickle": "pickle",
    "truncated": "truncated",
    "garbage": "not a readable",
    "npy": "not an .npz",
}


def test_every_bad_file_is_refused_with_a_message_naming_the_file_and_what_is_wrong(checks, tmp_path):
    files = _bad_files(checks["mahalanobis"], tmp_path)
    assert set(files) == set(REFUSALS)
    for name, path in files.items():
        with pytest.raises(InputCheckError) as caught:
            InputCheck.load(path)
        message = str(caught.value)
        assert str(path) in message and REFUSALS[name] in message, f"{name}: {message}"


def test_a_missing_file_a_wrong_sha256_and_a_wrong_feature_dim_are_refused(checks, tmp_path):
    missing = tmp_path / "nowhere" / "input_check.npz"
    with pytest.raises(InputCheckError, match="missing"):
        InputCheck.load(missing)
    path = tmp_path / "input_check.npz"
    digest = checks["knn"].save(path)
    with pytest.raises(InputCheckError, match="sha256") as caught:
        InputCheck.load(path, expected_sha256="0" * 64)
    assert str(path) in str(caught.value)
    assert InputCheck.load(path, expected_sha256=digest.upper()).method == "knn"
    with pytest.raises(InputCheckError, match=r"mean.*1024"):
        InputCheck.load(path, feature_dim=1024)


def test_knn_and_residual_files_check_their_own_fields(checks, tmp_path):
    knn = checks["knn"].arrays()
    _write(tmp_path / "k.npz", {**knn, "k": np.array(10_000, dtype=np.int64)})
    with pytest.raises(InputCheckError, match="'k'"):
        InputCheck.load(tmp_path / "k.npz")
    residual = checks["mahalanobis_residual"].arrays()
    _write(tmp_path / "r.npz", {**residual, "residual_variance": np.array(0.0)})
    with pytest.raises(InputCheckError, match="residual_variance"):
        InputCheck.load(tmp_path / "r.npz")


# ---------------------------------------------------------------------- metrics and estimators


def test_auroc_matches_a_brute_force_pair_count_ties_counting_half():
    rng = np.random.default_rng(3)
    for _ in range(20):
        inside = rng.integers(0, 6, rng.integers(1, 40)).astype(float)
        outside = rng.integers(2, 9, rng.integers(1, 40)).astype(float)
        pairs = (outside[:, None] > inside[None]).mean() + 0.5 * (outside[:, None] == inside[None]).mean()
        assert auroc(inside, outside) == pytest.approx(pairs, abs=1e-12)
    assert auroc([0, 1], [2, 3]) == 1.0 and auroc([2, 3], [0, 1]) == 0.0 and auroc([1, 1], [1]) == 0.5
    with pytest.raises(ValueError):
        auroc([], [1.0])


def _ledoit_wolf_reference(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit & Wolf (2004), Lemma 3.2-3.4 written out, one sample at a time (norms scaled by 1/p)."""
    n, p = x.shape
    s = x.T @ x / n
    m = np.trace(s) / p
    d2 = np.linalg.norm(s - m * np.eye(p), "fro") ** 2 / p
    b2_bar = sum(np.linalg.norm(np.outer(row, row) - s, "fro") ** 2 / p for row in x) / n**2
    b2 = min(b2_bar, d2)
    return b2 / d2 * m * np.eye(p) + (1 - b2 / d2) * s, b2 / d2


@pytest.mark.parametrize("n,p", [(50, 5), (8, 20), (200, 3)])
def test_ledoit_wolf_matches_the_formula_written_out(n, p):
    rng = np.random.default_rng(n + p)
    x = rng.normal(size=(n, p)) * rng.uniform(0.2, 3, p)
    x -= x.mean(axis=0)
    covariance, shrinkage = ledoit_wolf(x)
    reference, expected = _ledoit_wolf_reference(x)
    assert shrinkage == pytest.approx(expected, rel=1e-10) and 0 <= shrinkage <= 1
    np.testing.assert_allclose(covariance, reference, rtol=1e-10, atol=1e-12)


def test_ledoit_wolf_is_well_conditioned_with_fewer_samples_than_dimensions():
    x = np.random.default_rng(1).normal(size=(10, 64))
    x -= x.mean(axis=0)
    sample = x.T @ x / 10
    covariance, shrinkage = ledoit_wolf(x)
    assert np.linalg.matrix_rank(sample) < 64 and 0 < shrinkage <= 1
    assert np.linalg.eigvalsh(covariance).min() > 0 and np.linalg.cond(covariance) < 1e4
    isotropic = np.random.default_rng(2).normal(size=(5000, 4))
    assert ledoit_wolf(isotropic - isotropic.mean(0))[1] > 0.5  # the identity target is right: shrink much


def test_pca_axes_are_orthonormal_deterministic_and_capped():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(12, 50))
    mean, components, singular, d = pca(x, 32)
    assert d == 11 and components.shape == (50, 11)  # n - 1
    np.testing.assert_allclose(components.T @ components, np.eye(11), atol=1e-10)
    assert np.all(np.diff(singular) <= 0)
    np.testing.assert_array_equal(pca(x, 32)[1], components)
    wide = rng.normal(size=(60, 300)) * rng.uniform(0.1, 2, 300)  # the Gram route against a direct SVD
    _, axes, values, _ = pca(wide, 10)
    _, direct_values, direct_axes = np.linalg.svd(wide - wide.mean(axis=0), full_matrices=False)
    np.testing.assert_allclose(values, direct_values[:10], rtol=1e-10)
    np.testing.assert_allclose(np.abs(axes.T @ direct_axes[:10].T), np.eye(10), atol=1e-8)
    tall = rng.normal(size=(500, 20))  # more images than features: the direct SVD
    assert pca(tall, 32)[3] == 20 and np.allclose(pca(tall, 32)[1].T @ pca(tall, 32)[1], np.eye(20))
    low_rank = rng.normal(size=(40, 3)) @ rng.normal(size=(3, 50))
    assert pca(low_rank, 32)[3] == 3  # the rank
    with pytest.raises(ValueError, match="identical"):
        pca(np.ones((5, 50)), 4)


# ---------------------------------------------------------------------- degenerate training sets


@pytest.mark.parametrize("method", METHODS)
def test_few_images_an_absent_class_and_constant_features_still_give_a_finite_check(world, method, tmp_path):
    x = world.train_x[:12].copy()
    y = np.where(world.train_y[:12] == 1, 2, world.train_y[:12])  # class 1 absent from "train"
    x[:, :1000] = 0.0  # dead units
    check = fit_input_check(x, y, method=method, dims=64)
    assert check.dims == 11
    if check.class_means is not None:
        assert check.class_means.shape[0] == 2
    scores = check.score(world.test_x[:20])
    assert np.all(np.isfinite(scores))
    check = choose_threshold(check, world.val_x[:40])
    check.save(tmp_path / "c.npz")
    assert InputCheck.load(tmp_path / "c.npz").dims == 11


def test_fit_refuses_bad_inputs(world):
    with pytest.raises(ValueError, match="method"):
        fit_input_check(world.train_x, world.train_y, method="odin")
    with pytest.raises(ValueError, match="labels"):
        fit_input_check(world.train_x, world.train_y[:-1])
    with pytest.raises(ValueError, match="NaN"):
        fit_input_check(np.where(np.eye(300, D, dtype=bool), np.nan, world.train_x), world.train_y)
    with pytest.raises(ValueError, match="shrinkage"):
        fit_input_check(world.train_x, world.train_y, shrinkage=2.0)
    fixed = fit_input_check(world.train_x, world.train_y, shrinkage=0.1)
    assert np.all(np.isfinite(fixed.precision))


# ---------------------------------------------------------------------- comparison


def test_compare_methods_gives_one_row_per_method_with_the_auroc_per_set(world):
    rng = np.random.default_rng(5)

    def confident(n):  # a classifier sure of in-distribution images...
        p = rng.dirichlet([20, 1, 1], n)
        return p[:, rng.permutation(3)]

    ood_sets = {name: world.ood[name] for name in ("other cluster", "uniform noise", "scaled x3")}
    probabilities = {"val": confident(400), "test": confident(400),
                     "ood": {name: rng.dirichlet([2, 2, 2], len(f)) for name, f in ood_sets.items()}}  # ...less of others
    logits = {"val": np.log(probabilities["val"]), "test": np.log(probabilities["test"]),
              "ood": {k: np.log(v) for k, v in probabilities["ood"].items()}}
    rows = compare_methods(world.train_x, world.train_y, world.val_x, world.test_x, ood_sets,
                           probabilities=probabilities, logits=logits)
    assert [row["method"] for row in rows] == [*METHODS, "max_softmax", "energy"]
    for row in rows:
        assert set(row["auroc"]) == set(ood_sets) == set(row["ood_flag_rate"]), row["method"]
        assert row["mean_auroc"] == pytest.approx(np.mean(list(row["auroc"].values())))
        assert 0 <= row["test_flag_rate"] <= 0.15 and row["reference"] and "95th percentile" in row["threshold_rule"]
        assert row["servable"] is (row["method"] in METHODS)
        if row["servable"]:
            assert row["dims"] == DEFAULT_DIMS and 200_000 < row["file_bytes"] < 400_000
    by_method = {row["method"]: row for row in rows}
    assert by_method["max_softmax"]["mean_auroc"] > 0.9
    assert pick_default(rows) in METHODS
    assert by_method[pick_default(rows)]["mean_auroc"] == max(by_method[m]["mean_auroc"] for m in METHODS)
    with pytest.raises(ValueError, match="test"):
        compare_methods(world.train_x, world.train_y, world.val_x, world.test_x, ood_sets,
                        probabilities={"val": probabilities["val"], "ood": probabilities["ood"]}, methods=())


def test_the_baseline_scores():
    p = np.array([[0.9, 0.05, 0.05], [1 / 3, 1 / 3, 1 / 3]])
    np.testing.assert_allclose(max_softmax_score(p), [0.1, 2 / 3])
    logits = np.array([[0.0, 0.0], [1000.0, 1000.0]])
    np.testing.assert_allclose(energy_score(logits), [-math.log(2), -1000 - math.log(2)])
