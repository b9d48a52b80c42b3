"""SR metrics: PSNR/SSIM match hand computations; missing weights are named, never downloaded."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view

from dtkd_pipeline.evaluate import metrics as metrics_module
from dtkd_pipeline.evaluate.metrics import (
    METRICS,
    PYIQA_WEIGHTS_URL,
    FullReferenceMetrics,
    MetricSuite,
    MetricUnavailableError,
    MetricWeightsError,
    MissingWeight,
    evaluate_pairs,
    missing_metric_weights,
)
from tests.pipeline_helpers import bars_made

# Imported here, at collection, under the real TORCH_HOME: the tests below then switch TORCH_HOME
# after pyiqa fixed its cache folder, as happens when pyiqa was imported earlier in a session.
pytest.importorskip("pyiqa")

SCALE = 4


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty TORCH_HOME; returns its hub folder (torch.hub.get_dir())."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    hub = Path(torch.hub.get_dir())
    assert hub == tmp_path / "torch" / "hub"
    return hub


def _pair(noise: float = 0.08, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth 8-bit GT image and a noisy 8-bit SR image, H×W×3 float64 in [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:72, 0:80]
    gt = np.stack([0.5 + 0.4 * np.sin(xx / 5 + c) * np.cos(yy / 7) for c in range(3)], axis=-1)
    gt = np.round(gt * 255) / 255
    sr = np.clip(np.round((gt + rng.normal(0, noise, gt.shape)) * 255) / 255, 0, 1)
    return sr, gt


def _tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float()[None]


def _y(img: np.ndarray) -> np.ndarray:
    """BT.601 Y in [16/255, 235/255] (MATLAB rgb2ycbcr) of RGB in [0, 1]."""
    return (16 + img @ np.array([65.481, 128.553, 24.966])) / 255


def _crop(img: np.ndarray, border: int) -> np.ndarray:
    return img[border:-border, border:-border]


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Gaussian-window SSIM (11×11, σ=1.5, K1=0.01, K2=0.03, range 255), 'valid' like BasicSR."""
    ax = np.arange(11) - 5
    window = np.exp(-(ax[:, None] ** 2 + ax[None] ** 2) / (2 * 1.5**2))
    window /= window.sum()

    def filt(x: np.ndarray) -> np.ndarray:
        return np.einsum("ijkl,kl->ij", sliding_window_view(x, window.shape), window)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = filt(a), filt(b)
    var_a, var_b = filt(a * a) - mu_a**2, filt(b * b) - mu_b**2
    cov = filt(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    return float(ssim_map.mean())


# ------------------------------------------------------------------------------ PSNR and SSIM


def test_psnr_y_and_ssim_y_match_hand_computation(torch_home: Path) -> None:
    sr, gt = _pair()
    scores = MetricSuite(["psnr", "ssim"], scale=SCALE)(_tensor(sr), _tensor(gt))
    assert list(scores) == ["psnr_y", "ssim_y"]

    y_sr, y_gt = _crop(_y(sr), SCALE), _crop(_y(gt), SCALE)
    psnr = 10 * np.log10(1 / np.mean((y_sr - y_gt) ** 2))
    # pyiqa adds 1e-8 to the MSE (~2e-3 here): ~2e-5 dB, inside the tolerance.
    assert scores["psnr_y"] == pytest.approx(psnr, abs=1e-4)

    # SwinIR's and BasicSR's calculate_ssim keep Y·255 unrounded, as PSNR-Y does. pyiqa's SSIM
    # module would round it first (MATLAB's uint8 rgb2ycbcr): 3.7e-4 lower on this noisy pair,
    # the size of the gaps papers report, so the rounded number must not be what is computed.
    ssim_basicsr = _ssim(y_sr * 255, y_gt * 255)
    ssim_rounded = _ssim(np.round(y_sr * 255), np.round(y_gt * 255))
    assert scores["ssim_y"] == pytest.approx(ssim_basicsr, abs=1e-6)
    assert abs(scores["ssim_y"] - ssim_rounded) > 1e-4


def test_rgb_scores_match_hand_computation_and_validation_averages_y(torch_home: Path) -> None:
    sr, gt = _pair(seed=1)
    scores = MetricSuite(["psnr", "ssim"], scale=SCALE, color="rgb")(_tensor(sr), _tensor(gt))
    assert list(scores) == ["psnr", "ssim"]
    a, b = _crop(sr, SCALE), _crop(gt, SCALE)
    assert scores["psnr"] == pytest.approx(10 * np.log10(1 / np.mean((a - b) ** 2)), abs=1e-4)
    per_channel = [_ssim(a[..., c] * 255, b[..., c] * 255) for c in range(3)]
    assert scores["ssim"] == pytest.approx(np.mean(per_channel), abs=1e-6)

    # The training-time validation metrics are the Y numbers, averaged over the batch.
    batch_sr = torch.cat([_tensor(sr), _tensor(gt)])
    batch_gt = torch.cat([_tensor(gt), _tensor(gt)])
    single = MetricSuite(["psnr", "ssim"], scale=SCALE)(_tensor(sr), _tensor(gt))
    mean = FullReferenceMetrics(scale=SCALE)(batch_sr, batch_gt)
    assert set(mean) == {"psnr_y", "ssim_y"}
    assert mean["ssim_y"] == pytest.approx((single["ssim_y"] + 1.0) / 2, abs=1e-6)


def test_scores_clamp_out_of_range_sr_to_what_an_image_file_holds(torch_home: Path) -> None:
    sr, gt = _pair(seed=2)
    overshoot = _tensor(sr) * 1.5 - 0.25  # a network's raw output leaves [0, 1]
    suite = MetricSuite(["psnr", "ssim"], scale=SCALE)
    assert suite(overshoot, _tensor(gt)) == suite(overshoot.clamp(0, 1), _tensor(gt))


class _Shift(torch.nn.Module):
    """A "model" that returns its LR input brightened by an amount that is not 8-bit."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.3 / 255


def test_validation_scores_the_8_bit_output_averaged_over_images(torch_home: Path) -> None:
    pairs = [_pair(seed=seed) for seed in (3, 4)]
    tensors = [(_tensor(sr), _tensor(gt)) for sr, gt in pairs]
    metrics = FullReferenceMetrics(scale=SCALE)
    got = evaluate_pairs(_Shift(), tensors, metrics, torch.device("cpu"))
    expected = {key: 0.0 for key in got}
    for lr, hr in tensors:
        saved = torch.round((lr + 0.3 / 255).clamp(0, 1) * 255) / 255  # as a PNG would hold it
        for key, value in metrics(saved, hr).items():
            expected[key] += value / len(tensors)
    assert got == pytest.approx(expected, abs=1e-9)
    unrounded = metrics((tensors[0][0] + 0.3 / 255).clamp(0, 1), tensors[0][1])
    assert unrounded["psnr_y"] != pytest.approx(metrics(tensors[0][0], tensors[0][1])["psnr_y"])


def test_validation_counts_its_images_on_a_passing_bar_only_when_asked(
    torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whole validation images take seconds each on a CPU: a bar under the training bar counts
    them and goes when done; library callers and a single image get none."""
    tensors = [(_tensor(sr), _tensor(gt)) for sr, gt in (_pair(seed=3), _pair(seed=4))]
    metrics = FullReferenceMetrics(scale=SCALE)
    bars = bars_made(monkeypatch, metrics_module)
    evaluate_pairs(_Shift(), tensors, metrics, torch.device("cpu"), progress=True)
    evaluate_pairs(_Shift(), tensors, metrics, torch.device("cpu"))
    evaluate_pairs(_Shift(), tensors[:1], metrics, torch.device("cpu"), progress=True)
    assert [(bar.total, bar.unit, bar.leave, bar.shown) for bar in bars] == [
        (2, "img", False, True),
        (2, "img", False, False),
        (1, "img", False, False),
    ]
    hidden = bars_made(monkeypatch, metrics_module, tqdm_disable=True)
    evaluate_pairs(_Shift(), tensors, metrics, torch.device("cpu"), progress=True)
    assert [bar.shown for bar in hidden] == [False]


def test_call_takes_one_image_and_needs_gt_for_full_reference(torch_home: Path) -> None:
    suite = MetricSuite(["psnr"], scale=SCALE)
    image = _tensor(_pair()[1])
    with pytest.raises(ValueError, match="one image"):
        suite(torch.cat([image, image]), torch.cat([image, image]))
    with pytest.raises(ValueError, match="give gt"):
        suite(image)
    with pytest.raises(ValueError, match="unknown metric"):
        MetricSuite(["psnr", "fid"], scale=SCALE)


# ------------------------------------------------------------------------------- weight files


def test_missing_weights_are_listed_with_exact_paths(torch_home: Path) -> None:
    missing = missing_metric_weights(["lpips", "musiq", "niqe"])
    hf = PYIQA_WEIGHTS_URL
    assert missing == [
        MissingWeight(
            "lpips",
            "alexnet-owt-7be5be79.pth",
            torch_home / "checkpoints" / "alexnet-owt-7be5be79.pth",
            "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        ),
        MissingWeight(
            "lpips",
            "LPIPS_v0.1_alex-df73285e.pth",
            torch_home / "pyiqa" / "LPIPS_v0.1_alex-df73285e.pth",
            hf + "LPIPS_v0.1_alex-df73285e.pth",
        ),
        MissingWeight(
            "musiq",
            "musiq_koniq_ckpt-e95806b9.pth",
            torch_home / "pyiqa" / "musiq_koniq_ckpt-e95806b9.pth",
            hf + "musiq_koniq_ckpt-e95806b9.pth",
        ),
        MissingWeight(
            "niqe",
            "niqe_modelparameters.mat",
            torch_home / "pyiqa" / "niqe_modelparameters.mat",
            hf + "niqe_modelparameters.mat",
        ),
    ]
    assert hf == "https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/"
    assert missing_metric_weights(["psnr", "ssim"]) == []
    [clip] = missing_metric_weights(["clipiqa"])
    assert clip.expected_path == torch_home / "clip" / "RN50.pt"

    with pytest.raises(MetricWeightsError) as caught:
        MetricSuite(["psnr", "lpips", "musiq", "niqe"], scale=SCALE)
    message = str(caught.value)
    for item in missing:
        assert f"{item.metric}: {item.expected_path}  <- {item.url}" in message
    assert "--skip-unavailable" in message
    assert not (torch_home / "pyiqa").exists()  # nothing was created, let alone downloaded


def test_skip_unavailable_records_reasons_and_computes_the_rest(torch_home: Path) -> None:
    suite = MetricSuite(
        ["psnr", "ssim", "lpips", "musiq", "niqe"], scale=SCALE, skip_unavailable=True
    )
    assert set(suite.skipped) == {"lpips", "musiq", "niqe"}
    assert str(torch_home / "pyiqa" / "niqe_modelparameters.mat") in suite.skipped["niqe"]
    assert "alexnet-owt-7be5be79.pth" in suite.skipped["lpips"]
    assert "LPIPS_v0.1_alex-df73285e.pth" in suite.skipped["lpips"]
    assert suite.keys == ["psnr_y", "ssim_y"]
    sr, gt = _pair()
    scores = suite(_tensor(sr), _tensor(gt))
    assert set(scores) == {"psnr_y", "ssim_y"} and all(np.isfinite(list(scores.values())))


def test_clip_import_failure_becomes_a_skip_reason(
    torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Simulate setuptools >= 82 (no pkg_resources), whatever is installed here.
    for module in [m for m in sys.modules if m == "clip" or m.startswith("clip.")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "pkg_resources", None)
    suite = MetricSuite(["psnr", "clipiqa"], scale=SCALE, skip_unavailable=True)
    assert "setuptools<82" in suite.skipped["clipiqa"]
    assert suite.keys == ["psnr_y"]
    with pytest.raises(MetricUnavailableError, match="setuptools<82"):
        MetricSuite(["clipiqa"], scale=SCALE)


def _write_dummy_lpips_weights(hub: Path) -> dict[str, torch.Tensor]:
    """Random AlexNet + LPIPS linear weights of the right shapes at the expected paths."""
    from torchvision.models import alexnet

    state = alexnet(weights=None).state_dict()
    # The classifier (~58M parameters) is never used by LPIPS: zero-stride views keep the file
    # tiny while load_state_dict still sees the right shapes.
    state = {
        k: (v if k.startswith("features.") else torch.zeros(1).expand(v.shape))
        for k, v in state.items()
    }
    (hub / "checkpoints").mkdir(parents=True)
    torch.save(state, hub / "checkpoints" / "alexnet-owt-7be5be79.pth")
    # pyiqa's LPIPS: lin{k} = NetLinLayer = Sequential(Dropout, Conv2d(chn, 1, 1, bias=False)).
    generator = torch.Generator().manual_seed(0)
    lins = {
        f"lin{k}.model.1.weight": torch.rand(1, chn, 1, 1, generator=generator)
        for k, chn in enumerate([64, 192, 384, 256, 256])
    }
    (hub / "pyiqa").mkdir(parents=True)
    torch.save(lins, hub / "pyiqa" / "LPIPS_v0.1_alex-df73285e.pth")
    return lins


def test_lpips_runs_offline_from_files_under_torch_home(torch_home: Path) -> None:
    import pyiqa.utils.download_util as pyiqa_download

    # pyiqa fixed its cache folder at import, before TORCH_HOME changed: explicit paths must win.
    assert Path(pyiqa_download.DEFAULT_CACHE_DIR) != torch_home / "pyiqa"
    lins = _write_dummy_lpips_weights(torch_home)
    assert missing_metric_weights(["lpips"]) == []

    suite = MetricSuite(["lpips"], scale=SCALE)
    net = suite.metrics["lpips"].net
    for key, value in lins.items():  # pyiqa loads LPIPS non-strictly: check the keys took
        index = int(key[3])
        torch.testing.assert_close(net.lins[index].model[1].weight, value)
    sr, gt = _pair()
    score = suite(_tensor(sr), _tensor(gt))["lpips"]
    assert np.isfinite(score) and score > 0
    assert suite(_tensor(gt), _tensor(gt))["lpips"] == 0.0
    assert METRICS["lpips"].lower_is_better and METRICS["lpips"].full_reference
