"""`mammo-train explain` pieces: cell grids, model-grid <-> DICOM-grid mapping, heatmaps, localisation,
overlays, Secondary Captures and the command's one-line errors (random-init models; the trained-model
pointing-game check is in test_explain_slow.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from data_fixtures import write_dicom
from model_fixtures import one_torch_thread  # noqa: F401 - autouse: 1 torch thread in this module
from torch import nn

from mammo_fl.common.cli.data import main as data_main
from mammo_fl.common.cli.train import main as train_main
from mammo_fl.common.imaging.geometry import Geometry, PreprocessSettings, preprocess_array
from mammo_fl.common.models import build_model, convert_patch_to_whole
from mammo_fl.common.models.checkpoint import PATCH_CLASSES, WHOLE_IMAGE_CLASSES, load_checkpoint, save_checkpoint
from mammo_fl.common.models.patch import build_trunk
from mammo_fl.common.pipeline.cell_grid import CellGrid, cells_to_pixels, probe_cell_grid
from mammo_fl.common.pipeline.explain import CamExplainer, PatchExplainer
from mammo_fl.common.pipeline.localisation import breast_region, locate, pointing_game
from mammo_fl.common.pipeline.secondary_capture import SERIES_DESCRIPTION, write_secondary_capture
from mammo_fl.common.pipeline.source_grid import content_mask, model_to_source, source_pixel, source_to_model
from mammo_fl.common.utils.errors import DataError

# ------------------------------------------------------------------ cell grids


@pytest.mark.parametrize("module, scale, offset", [
    (nn.Conv2d(3, 8, 3, stride=2, padding=1), 2.0, 0.0),  # "same" padding: cell j centred on pixel 2j
    (nn.MaxPool2d(2, 2), 2.0, 0.5),  # 2x2 pool: between pixels 2j and 2j + 1
    (nn.Sequential(*[nn.AvgPool2d(2, 2)] * 4), 16.0, 7.5),
])
def test_probe_finds_cell_centres_of_simple_layers(module: nn.Module, scale: float, offset: float) -> None:
    assert probe_cell_grid(module) == CellGrid((scale, scale), (offset, offset))


def test_probe_on_the_presets_networks() -> None:
    assert probe_cell_grid(build_trunk("resnet_tiny16")) == CellGrid((16.0, 16.0), (0.0, 0.0))
    assert probe_cell_grid(build_trunk("vgg_tiny")) == CellGrid((32.0, 32.0), (15.5, 15.5))
    whole = build_model("whole_image", {"trunk": "resnet_tiny16", "num_classes": 2, "dropout": 0.0,
                                        "top": {"type": "vgg", "blocks": [[8, 1], [8, 1]]}})
    # VGG top blocks end in 2x2 max-pools: +0.5 cell at stride 16, then at stride 32
    assert probe_cell_grid(nn.Sequential(whole.trunk, whole.top)) == CellGrid((64.0, 64.0), (24.0, 24.0))
    # a 4-cell patch window (stride-1 average pool) centres 1.5 cells further
    assert CellGrid((16.0, 16.0), (0.0, 0.0)).pooled((4, 4)) == CellGrid((16.0, 16.0), (24.0, 24.0))


def test_cells_to_pixels_puts_cell_values_on_their_centres() -> None:
    grid = CellGrid((16.0, 16.0), (7.5, 7.5))
    cell_map = np.arange(12, dtype=np.float32).reshape(3, 4)  # = 4 * row + col: bilinear reproduces it
    pixels = cells_to_pixels(cell_map, grid, (48, 64))
    assert pixels.shape == (48, 64)
    assert pixels[23, 39] == pytest.approx(4 * (23 - 7.5) / 16 + (39 - 7.5) / 16, abs=1e-5)
    assert pixels[39, 23] == pytest.approx(4 * (39 - 7.5) / 16 + (23 - 7.5) / 16, abs=1e-5)
    assert pixels[0, 0] == cell_map[0, 0] and pixels[47, 63] == cell_map[2, 3]  # held constant past the edges


# ------------------------------------------------------------------ model grid <-> stored DICOM grid


def _breast(height: int, width: int, chest_wall_right: bool) -> np.ndarray:
    """Float image: a smooth half-ellipse of tissue against one side, black elsewhere."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    x = (width - 1 - xx) if chest_wall_right else xx
    inside = ((yy - height / 2) / (height * 0.4)) ** 2 + (x / (width * 0.6)) ** 2 <= 1.0
    return np.where(inside, 0.35, 0.0)


def _spot(image: np.ndarray, row: float, col: float, sigma: float) -> np.ndarray:
    yy, xx = np.mgrid[0:image.shape[0], 0:image.shape[1]]
    return np.maximum(image, 0.95 * np.exp(-((yy - row) ** 2 + (xx - col) ** 2) / (2 * sigma**2)))


@pytest.mark.parametrize("mode", ["paper", "crop"])
def test_mapping_round_trips(mode: str) -> None:
    settings = PreprocessSettings(288, 224, mode)
    _, g = preprocess_array(_breast(700, 430, chest_wall_right=True), settings)
    if mode == "crop":
        assert g.flip and g.crop != (0, 700, 0, 430) and g.resized != g.out_shape
    rows, cols = np.array([10.0, 350.2, 650.0]), np.array([300.0, 410.0, 390.7])
    back = model_to_source(*source_to_model(rows, cols, g), g)
    assert np.allclose(back, (rows, cols))


@pytest.mark.parametrize("mode", ["paper", "crop"])
def test_bright_spot_maps_back_to_its_dicom_pixel(mode: str) -> None:
    """A spot at a known place in a non-square image: its maximum on the model grid maps back to it."""
    spot = (412.0, 351.0)  # (row, col) in the stored 700 x 430 grid, inside the breast on the right
    image = _spot(_breast(700, 430, chest_wall_right=True), *spot, sigma=3.0)
    cached, g = preprocess_array(image, PreprocessSettings(288, 224, mode))
    y, x = np.unravel_index(int(np.argmax(cached)), cached.shape)
    row, col = source_pixel(y, x, g)
    scale = 700 / g.resized[0]  # source pixels per model pixel
    assert abs(row - spot[0]) <= scale and abs(col - spot[1]) <= scale
    if mode == "crop":
        assert x < g.resized[1] / 2  # flipped: the chest wall (right in the file) is on the left of the model grid


@pytest.mark.parametrize("mode", ["paper", "crop"])
def test_heatmap_peak_maps_back_through_a_strided_network(mode: str) -> None:
    """Full chain: DICOM grid -> preprocessing -> a stride-16 network (cells centred at 16j + 7.5) ->
    pixel map -> peak -> DICOM grid. A half-cell error would put the peak 7.5 model pixels away (~18 here)."""
    settings = PreprocessSettings(288, 224, mode)
    _, g = preprocess_array(_breast(700, 430, chest_wall_right=True), settings)
    net = nn.Sequential(*[nn.AvgPool2d(2, 2)] * 4)
    grid = probe_cell_grid(net)
    cell = (11, 10) if mode == "paper" else (11, 3)  # the spot goes on this cell's centre (inside the breast)
    spot = model_to_source(*grid.to_pixels(np.array(cell[0]), np.array(cell[1])), g)
    scale = (g.crop[1] - g.crop[0]) / g.resized[0]
    cached, g = preprocess_array(_spot(_breast(700, 430, True), float(spot[0]), float(spot[1]), 1.2 * scale),
                                 settings)
    with torch.no_grad():
        cell_map = net(torch.from_numpy(cached.astype(np.float32))[None, None])[0, 0].numpy()
    assert np.unravel_index(int(np.argmax(cell_map)), cell_map.shape) == cell
    loc = locate(cell_map, grid, g, content_mask(g), None)
    assert abs(loc.source[0] - spot[0]) <= 0.5 * scale + 1 and abs(loc.source[1] - spot[1]) <= 0.5 * scale + 1


def test_peak_is_the_hottest_cell_centre_outside_crop_padding() -> None:
    g = Geometry(src_shape=(100, 80), crop=(0, 100, 0, 80), flip=False, resized=(40, 20), out_shape=(40, 32))
    grid = CellGrid((4.0, 4.0), (1.5, 1.5))  # 10 x 8 cells of 4 px
    cell_map = np.zeros((10, 8), dtype=np.float32)
    cell_map[1, 6] = 9.0  # centred on the zero padding (x = 25.5 >= 20): never the peak
    cell_map[2, 1] = 1.0  # centre (9.5, 5.5) -> pixel (10, 6) (rounded half to even)
    roi = np.zeros((40, 32), dtype=bool)
    roi[8:12, 4:8] = True
    loc = locate(cell_map, grid, g, content_mask(g), roi)
    assert loc.peak == (10, 6) and loc.in_roi and loc.source == source_pixel(10, 6, g)
    assert loc.value == pytest.approx(1.0) and 0.5 < loc.roi_mass < 1.0  # bilinear spread past the ROI
    assert loc.roi_area == pytest.approx(16 / (40 * 20))


def test_peak_is_searched_in_the_breast_only() -> None:
    """The patch net never saw black background: a hot cell there is not the peak."""
    image = (_breast(96, 72, chest_wall_right=False) * 65535).astype(np.uint16)
    g = Geometry(src_shape=(96, 72), crop=(0, 96, 0, 72), flip=False, resized=(96, 72), out_shape=(96, 72))
    region = breast_region(image, g)
    assert region[48, 5] and not region[5, 68]
    grid = CellGrid((8.0, 8.0), (3.5, 3.5))
    cell_map = np.zeros((12, 9), dtype=np.float32)
    cell_map[0, 8] = 1.0  # top-right corner: background
    cell_map[6, 2] = 0.5
    assert locate(cell_map, grid, g, region, None).peak == (52, 20)


def test_pointing_game_counts_malignant_images_with_a_target_roi() -> None:
    table = pd.DataFrame({"label": [1, 1, 1, 0], "peak_in_roi": pd.array([1, 0, None, 1], dtype="Int64"),
                          "roi_mass": [0.5, 0.1, None, 0.9], "roi_area": [0.02, 0.04, None, 0.1]})
    summary = pointing_game(table)
    assert (summary.images, summary.hits) == (2, 1) and summary.accuracy == 0.5
    assert summary.mean_roi_mass == pytest.approx(0.3) and summary.chance == pytest.approx(0.03)


# ------------------------------------------------------------------ heatmaps from checkpoints


def _models(tmp: Path, top: dict | None = None) -> tuple[Path, Path]:
    """Random-init patch + whole-image checkpoints (96x72 images, 24-px patches), side by side."""
    torch.manual_seed(0)
    patch = build_model("patch", {"arch": "resnet_tiny16", "num_classes": 5, "dropout": 0.0})
    whole = convert_patch_to_whole(patch, top or {"type": "resnet", "blocks": [[8, 8, 16, 1], [8, 8, 16, 1]]},
                                   input_size=[96, 72])
    tmp.mkdir(parents=True, exist_ok=True)
    save_checkpoint(tmp / "patch_model.pt", patch, kind="patch", model_spec=patch.spec,
                    preprocessing={"height": 24, "width": 24, "mode": "paper", "mean": 40.0},
                    class_names=PATCH_CLASSES)
    save_checkpoint(tmp / "whole_image.pt", whole, kind="whole_image", model_spec=whole.spec,
                    preprocessing={"height": 96, "width": 72, "mode": "paper", "mean": 50.0},
                    class_names=WHOLE_IMAGE_CLASSES)
    return tmp / "whole_image.pt", tmp / "patch_model.pt"


def test_cam_mean_evidence_is_the_models_logit(tmp_path: Path) -> None:
    whole_path, _ = _models(tmp_path)
    whole = load_checkpoint(whole_path)
    x = torch.randn(2, 3, 96, 72) * 30
    batch = CamExplainer(whole, torch.device("cpu"))(x)
    with torch.no_grad():
        logits = whole.model(x)
    assert np.allclose(batch.probs, torch.softmax(logits, 1)[:, 1].numpy(), atol=1e-5)
    explainer = CamExplainer(whole, torch.device("cpu"))
    with torch.no_grad():
        evidence = explainer.evidence(explainer.features(x))
    assert np.allclose(evidence.mean(dim=(1, 2)), logits[:, 1] - logits[:, 0], atol=1e-3)
    low, high = evidence.amin(dim=(1, 2), keepdim=True), evidence.amax(dim=(1, 2), keepdim=True)
    assert np.allclose(batch.maps, ((evidence - low) / (high - low)).numpy(), atol=1e-5)  # min-max scaled
    assert batch.maps.shape == (2, 2, 2) and batch.grid == CellGrid((64.0, 64.0), (0.0, 0.0))


def test_patch_heatmap_is_the_malignant_classes_probability(tmp_path: Path) -> None:
    whole_path, patch_path = _models(tmp_path)
    whole, patch = load_checkpoint(whole_path), load_checkpoint(patch_path)
    explainer = PatchExplainer(whole, patch, torch.device("cpu"))
    batch = explainer(torch.randn(1, 3, 96, 72) * 30)
    assert explainer.window == 2 and batch.grid == CellGrid((16.0, 16.0), (8.0, 8.0))  # 24-px patch = 1.5 -> 2 cells
    assert batch.maps.shape == (1, 5, 4) and ((batch.maps >= 0) & (batch.maps <= 1)).all()


# ------------------------------------------------------------------ Secondary Capture


def test_secondary_capture_references_the_source_study(tmp_path: Path) -> None:
    source = write_dicom(tmp_path / "src.dcm", np.zeros((300, 240), np.uint16), patient_id="PAT-7")
    ds = pydicom.dcmread(source)
    ds.StudyInstanceUID = "1.2.3.4.5"
    ds.save_as(source)
    rgb = np.zeros((64, 48, 3), np.uint8)
    rgb[..., 0] = 200
    out = write_secondary_capture(rgb, source, tmp_path / "sc.dcm", "1.2.3.9", 3)
    sc = pydicom.dcmread(out)
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and sc.Modality == "OT"
    assert sc.StudyInstanceUID == "1.2.3.4.5" and sc.PatientID == "PAT-7" and sc.SeriesInstanceUID == "1.2.3.9"
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
    assert "NOT FOR DIAGNOSTIC USE" in sc.SeriesDescription == SERIES_DESCRIPTION and sc.BurnedInAnnotation == "YES"
    assert sc.pixel_array.shape == (64, 48, 3) and sc.pixel_array[0, 0, 0] == 200


def test_secondary_capture_needs_a_study_to_reference(tmp_path: Path) -> None:
    source = write_dicom(tmp_path / "src.dcm", np.zeros((300, 240), np.uint16))  # no StudyInstanceUID
    with pytest.raises(DataError, match="StudyInstanceUID"):
        write_secondary_capture(np.zeros((8, 8, 3), np.uint8), source, tmp_path / "sc.dcm", "1.2.3", 1)


# ------------------------------------------------------------------ the command


@pytest.fixture(scope="module")
def cbis_index(synth_cbis, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("explain_index") / "idx"
    assert data_main(["index", "--format", "cbis-ddsm", str(synth_cbis), "--out", str(out)]) == 0
    assert data_main(["split", "--index", str(out), "--fractions", "train=0.5,val=0.25,test=0.25"]) == 0
    return out


def _explain(*args: str) -> int:
    return train_main(["explain", "--quiet", "--workers", "1", *args])


def test_explain_writes_overlays_csv_and_secondary_captures(cbis_index: Path, tmp_path: Path, capsys) -> None:
    whole, _ = _models(tmp_path / "run")
    out = tmp_path / "explain"
    assert _explain("--model", str(whole), "--data", str(cbis_index), "--out", str(out), "--images", "3",
                    "--dicom") == 0
    table = pd.read_csv(out / "explain.csv", dtype={"image_id": str})
    assert list(table.columns) == ["image_id", "label", "malignant_prob", "peak_row", "peak_col", "peak_value",
                                   "peak_in_roi", "roi_mass", "roi_area", "overlay"]
    assert len(table) == 3 and list(table["label"]) == sorted(table["label"], reverse=True)  # malignant first
    images = pd.read_csv(cbis_index / "images.csv", dtype={"image_id": str}).set_index("image_id")
    for _, row in table.iterrows():
        shape = pydicom.dcmread(images.loc[row["image_id"], "image_path"], stop_before_pixels=True)
        assert 0 <= row["peak_row"] < shape.Rows and 0 <= row["peak_col"] < shape.Columns
        assert (out / row["overlay"]).read_bytes()[:4] == b"\x89PNG"
        assert pydicom.dcmread(out / "dicom" / f"{row['image_id']}.dcm").SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert table.loc[table["label"] == 1, "peak_in_roi"].notna().all()
    printed = capsys.readouterr().out
    assert "3 images (test split)" in printed and "pointing game" in printed


def test_explain_on_a_site_without_rois_or_split_with_cam(synth_sites: Path, tmp_path: Path, capsys) -> None:
    """A hospital folder (manifest.csv, no ROIs, no split) and a federated model (no patch net beside it)."""
    index = tmp_path / "site_idx"
    assert data_main(["index", "--format", "manifest", str(synth_sites / "site-1"), "--out", str(index)]) == 0
    whole, _ = _models(tmp_path / "run")
    final = tmp_path / "fed" / "final.pt"
    final.parent.mkdir()
    shutil.copy(whole, final)
    out = tmp_path / "site_explain"
    assert _explain("--model", str(final), "--data", str(index), "--out", str(out), "--method", "cam",
                    "--images", "2") == 0
    table = pd.read_csv(out / "explain.csv")
    assert "peak_in_roi" not in table.columns and len(table) == 2
    printed = capsys.readouterr().out
    assert "all images (the index has no split)" in printed and "no ROI annotations" in printed


def _one_line_error(capsys, code: int, *fragments: str) -> None:
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


def test_patch_method_without_a_patch_net_is_a_one_line_error(cbis_index: Path, tmp_path: Path, capsys) -> None:
    whole, _ = _models(tmp_path / "run")
    alone = tmp_path / "fed" / "final.pt"
    alone.parent.mkdir()
    shutil.copy(whole, alone)
    code = _explain("--model", str(alone), "--data", str(cbis_index), "--out", str(tmp_path / "o1"))
    _one_line_error(capsys, code, "patch_model.pt", "--method cam")
    code = _explain("--model", str(alone), "--data", str(cbis_index), "--out", str(tmp_path / "o2"),
                    "--patch-model", str(whole))
    _one_line_error(capsys, code, "needs a patch classifier checkpoint", "whole_image")


def test_missing_roi_mask_is_a_one_line_error(cbis_index: Path, tmp_path: Path, capsys) -> None:
    index = tmp_path / "idx"
    shutil.copytree(cbis_index, index, ignore=shutil.ignore_patterns("cache"))
    rois = pd.read_csv(index / "rois.csv", dtype=str)
    rois["mask_path"] = str(tmp_path / "gone" / "mask.dcm")
    rois.to_csv(index / "rois.csv", index=False)
    whole, _ = _models(tmp_path / "run")
    code = _explain("--model", str(whole), "--data", str(index), "--out", str(tmp_path / "o"))
    _one_line_error(capsys, code, "mask.dcm", "ROI mask listed in rois.csv not found")


def test_cam_on_a_model_without_spatial_head_is_a_one_line_error(cbis_index: Path, tmp_path: Path, capsys) -> None:
    top = {"type": "heatmap_fc", "avg_pool": 2, "stride": 1, "heatmap_classes": 5, "pool": 2, "fc": [8],
           "shortcut": False}
    whole, _ = _models(tmp_path / "run", top)
    code = _explain("--model", str(whole), "--data", str(cbis_index), "--out", str(tmp_path / "o"), "--method", "cam")
    _one_line_error(capsys, code, "global-average-pooling")


def test_bad_image_count_is_a_one_line_error(cbis_index: Path, tmp_path: Path, capsys) -> None:
    whole, _ = _models(tmp_path / "run")
    code = _explain("--model", str(whole), "--data", str(cbis_index), "--out", str(tmp_path / "o"), "--images", "0")
    _one_line_error(capsys, code, "--images must be >= 1")
