"""Model-zoo checks (metadata schema, network input/output, TorchScript export) and ONNX export, offline.

Every checkpoint here is a segmenter with random (and a few hand-set) weights written to a temporary folder; nothing
is written into the bundle. The ONNX tests need ``pip install -e ".[export]"`` (onnx, onnxscript, onnxruntime) and are skipped without it.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ckpt_export, run, verify_metadata, verify_net_in_out

from scripts.checkpoint import network_features
from scripts.data.phantom import write_iseg
from scripts.networks import Segmenter

SCHEMA = "docs/meta_schema_20240725.json"  # the file behind metadata.json's "schema" URL, shipped with the bundle
SCHEMA_MD5 = "06954cad2cc5d3784e72077ac76f0fc8"
DYNAMIC = {0: "batch", 2: "x", 3: "y", 4: "z"}
SHIPPED = Path(__file__).resolve().parents[1] / "bundle" / "models" / "model.pt"


@pytest.fixture(scope="module")
def metadata(bundle_root):
    return json.loads((bundle_root / "configs" / "metadata.json").read_text())


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """The inference config's segmenter, saved as the bundle saves it (a plain state_dict), and the network.

    Random weights, with non-trivial batch-norm statistics, plus one channel that carries the T1 intensity from the
    stem through the last decoder level to the head, where it adds logits ``2 c_k t - c_k^2`` (nearest of the
    centres ``c_k``). The random channels still shift the logits, and the label map has all four classes with
    many boundaries, so that the ONNX and PyTorch label maps can be compared meaningfully.
    """
    torch.manual_seed(0)
    net = Segmenter(2, 4, features=network_features(SHIPPED)).eval()  # inference.yaml builds the shipped channels
    centres = torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0])  # in the scaled T1 range [-1, 1]
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
        for block in [net.stem.conv_0, net.stem.conv_1, net.up[-1].convs.conv_0, net.up[-1].convs.conv_1]:
            conv, norm = block.conv, block.adn.N  # channel 0 <- channel 0 (T1; x_e's first channel in UpCat)
            conv.weight[0] = 0
            conv.weight[0, 0, 1, 1, 1] = 1
            conv.bias[0] = 0
            norm.running_mean[0], norm.running_var[0], norm.weight[0], norm.bias[0] = 0, 1 - norm.eps, 1, 0
        net.stem.conv_0.conv.bias[0] = 2.0  # T1 + 2 > 0 passes the LeakyReLUs unchanged
        net.head.conv.weight[:, 0, 0, 0, 0] = 2 * centres
        net.head.conv.bias.copy_(-(centres**2) - 4 * centres)
    path = tmp_path_factory.mktemp("weights") / "model.pt"
    torch.save(net.state_dict(), path)
    return path, net


@pytest.fixture
def jsonschema():
    """verify_metadata validates with jsonschema (in the export extra)."""
    return pytest.importorskip("jsonschema")


@pytest.fixture
def offline(monkeypatch):
    """Fail any attempt to open a network connection."""

    def refuse(*args, **kwargs):
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _parser(bundle_root, *configs):
    parser = ConfigParser()
    parser.read_config([str(bundle_root / "configs" / c) for c in configs or ["inference.yaml"]])
    parser.read_meta(str(bundle_root / "configs" / "metadata.json"))
    parser["bundle_root"] = str(bundle_root)  # the shipped weights, whose channels the network reads
    return parser


# --- metadata --------------------------------------------------------------------------------------------------


def test_metadata_verifies_offline_against_shipped_schema(bundle_root, metadata, jsonschema, offline, monkeypatch):
    """`python -m monai.bundle verify_metadata --meta_file configs/metadata.json --filepath docs/meta_schema_...`"""
    assert metadata["schema"].rsplit("/", 1)[-1] == SCHEMA.rsplit("/", 1)[-1]
    monkeypatch.chdir(bundle_root)
    verify_metadata(meta_file="configs/metadata.json", filepath=SCHEMA, hash_val=SCHEMA_MD5)


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m.pop("network_data_format"),
        lambda m: m.pop("numpy_version"),
        lambda m: m["network_data_format"]["inputs"]["image"].update(num_channels="2"),
        lambda m: m["network_data_format"]["outputs"]["pred"].pop("spatial_shape"),
        lambda m: m.update(references="not a list"),
    ],
    ids=["no-network-data-format", "no-numpy-version", "channels-not-int", "no-output-shape", "references-not-list"],
)
def test_schema_rejects_invalid_metadata(bundle_root, metadata, tmp_path, jsonschema, offline, change):
    """The shipped schema is the real constraint set, not an empty object that accepts anything."""
    broken = json.loads(json.dumps(metadata))
    change(broken)
    (tmp_path / "metadata.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="Failed validating"):
        verify_metadata(meta_file=str(tmp_path / "metadata.json"), filepath=str(bundle_root / SCHEMA))


def test_version_and_changelog(metadata):
    """The model zoo's verify_version_changes: the version is in the changelog, and it is the newest entry."""
    version = metadata["version"]
    assert version in metadata["changelog"]

    def key(v):
        return tuple(int(part) for part in v.split("."))

    assert key(version) == max(key(v) for v in metadata["changelog"])


def test_network_data_format_describes_the_network(bundle_root, metadata):
    fmt = metadata["network_data_format"]
    image, pred = fmt["inputs"]["image"], fmt["outputs"]["pred"]
    parser = _parser(bundle_root)
    assert image["num_channels"] == len(parser.get_parsed_content("modalities")) == len(image["channel_def"])
    assert [image["channel_def"][str(i)] for i in range(2)] == ["T1", "T2"]
    assert pred["num_channels"] == parser.get_parsed_content("num_classes") == len(pred["channel_def"])
    assert [pred["channel_def"][str(i)] for i in range(4)] == ["background", "CSF", "GM", "WM"]
    levels = len(parser.get_parsed_content("network_features")) - 1
    assert all(s == f"{2**levels}*n" for s in image["spatial_shape"] + pred["spatial_shape"])


# --- network input and output ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 4])
def test_verify_net_in_out(bundle_root, n, monkeypatch):
    """`python -m monai.bundle verify_net_in_out network_def --meta_file ... --config_file ... --n N --device cpu`,
    plus the check it leaves out: the output keeps the input's spatial shape."""
    monkeypatch.chdir(bundle_root)
    verify_net_in_out(
        net_id="network_def", meta_file="configs/metadata.json", config_file="configs/inference.yaml", device="cpu", n=n
    )
    parser = _parser(bundle_root)
    net = parser.get_parsed_content("network_def").eval()
    size = 16 * n
    with torch.no_grad():
        out = net(torch.rand(1, 2, size, size, size))
    assert out.shape == (1, 4, size, size, size) and out.dtype == torch.float32


# --- TorchScript -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_trace", [False, True], ids=["script", "trace"])
def test_ckpt_export_torchscript_matches_eager(bundle_root, weights, tmp_path, monkeypatch, use_trace):
    """`python -m monai.bundle ckpt_export network_def --filepath model.ts --ckpt_file model.pt
    --meta_file configs/metadata.json --config_file configs/inference.yaml [--use_trace True --input_shape ...]`.

    Scripting keeps UpCat's padding branch, so the module takes any size; a traced module has it frozen for the
    example's shape and takes multiples of 16 only (the metadata's "16*n")."""
    ckpt, net = weights
    monkeypatch.chdir(bundle_root)
    ckpt_export(
        net_id="network_def",
        filepath=str(tmp_path / "model.ts"),
        ckpt_file=str(ckpt),
        meta_file="configs/metadata.json",
        config_file="configs/inference.yaml",
        use_trace=use_trace,
        input_shape=[1, 2, 32, 32, 32] if use_trace else None,
    )
    extra = {"metadata.json": "", "inference.json": ""}
    ts = torch.jit.load(str(tmp_path / "model.ts"), _extra_files=extra)
    assert json.loads(extra["metadata.json"])["version"] == json.loads(
        (bundle_root / "configs" / "metadata.json").read_text()
    )["version"]
    assert json.loads(extra["inference.json"])["network_def"]["_target_"] == "scripts.networks.Segmenter"
    shapes = [(2, 2, 48, 32, 64)] + ([] if use_trace else [(1, 2, 37, 41, 30)])
    for shape in shapes:
        x = torch.randn(shape)
        with torch.no_grad():
            torch.testing.assert_close(ts(x), net(x), rtol=1e-4, atol=1e-5)


# --- the model zoo's ci/verify_bundle.py ------------------------------------------------------------------------


def _zoo_copy(bundle_root, dest, state):
    """The bundle as the model zoo holds it: the files it ships, models/model.pt, eval/schema.json (the zoo's
    ci/prepare_schema.py downloads the schema URL there; here it is the shipped copy)."""
    for name in ["configs", "scripts", "docs"]:
        shutil.copytree(bundle_root / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(bundle_root / "LICENSE", dest / "LICENSE")
    (dest / "models").mkdir()
    torch.save(state, dest / "models" / "model.pt")
    (dest / "eval").mkdir()
    shutil.copy(bundle_root / SCHEMA, dest / "eval" / "schema.json")
    return dest


def test_model_zoo_verify_bundle(bundle_root, weights, tmp_path, jsonschema, offline):
    """ci/verify_bundle.py of Project-MONAI/model-zoo, mode "full", step by step, on a copy of the bundle."""
    _, net = weights
    bundle = _zoo_copy(bundle_root, tmp_path / "mri_gan_brain_tissue_segmentation", torch.load(weights[0]))
    # verify_bundle_directory: necessary and preferred files
    for name in ["configs/metadata.json", "LICENSE", "models/model.pt"]:
        assert (bundle / name).is_file(), name
    configs = sorted(p.name for p in (bundle / "configs").iterdir())
    inference = [c for c in configs if c in ("inference.json", "inference.yaml", "inference.yml")]
    assert inference == ["inference.yaml"]
    assert (bundle / "docs" / "README.md").is_file()  # the model card the zoo publishes
    # verify_version_changes
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert "version" in meta and "changelog" in meta and meta["version"] in meta["changelog"]
    # verify_metadata_format
    verify_metadata(meta_file=str(bundle / "configs/metadata.json"), filepath=str(bundle / "eval/schema.json"))
    # verify_bundle_properties: only for supported_apps with a properties file (none here)
    assert meta.get("supported_apps", {}) == {}
    # verify_data_shape (default device, p, n, any)
    config_file = os.path.join("configs", inference[0])
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(bundle / "configs/metadata.json"),
        config_file=str(bundle / config_file),
        bundle_root=str(bundle),
    )
    # verify_torchscript (no key_in_ckpt, no use_trace)
    ckpt_export(
        net_id="network_def",
        filepath=str(bundle / "models/verify_model.ts"),
        ckpt_file=str(bundle / "models/model.pt"),
        meta_file=str(bundle / "configs/metadata.json"),
        config_file=str(bundle / config_file),
        bundle_root=str(bundle),
    )
    ts = torch.jit.load(str(bundle / "models/verify_model.ts"))
    x = torch.randn(1, 2, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ts(x), net(x), rtol=1e-4, atol=1e-5)


# --- ONNX ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_model(bundle_root, weights, tmp_path_factory):
    """Export with the command documented in configs/inference_onnx.yaml, at batch 1 and 32^3."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    ckpt, _ = weights
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    tmp = tmp_path_factory.mktemp("onnx_tmpdir")  # MONAI exports to a temporary file, then re-saves it
    converter_kwargs = {
        "input_names": ["image"],
        "output_names": ["pred"],
        "external_data": False,
        "dynamic_axes": {"image": DYNAMIC, "pred": DYNAMIC},
    }
    command = [
        sys.executable, "-m", "monai.bundle", "onnx_export", "network_def",
        "--filepath", str(out), "--ckpt_file", str(ckpt), "--meta_file", "configs/metadata.json",
        "--config_file", "['configs/inference.yaml','configs/inference_onnx.yaml']",
        "--input_shape", "[1, 2, 32, 32, 32]", "--use_trace", "True",
        "--converter_kwargs", repr(converter_kwargs),
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(bundle_root), OMP_NUM_THREADS="1", TMPDIR=str(tmp))
    proc = subprocess.run(command, cwd=bundle_root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx"]  # the weights are inside the file
    assert list(tmp.glob("tmp*")) == []  # and no external-data file of the temporary export is left behind
    return out


def test_onnx_graph_has_dynamic_batch_and_spatial_axes(onnx_model):
    import onnx

    model = onnx.load(str(onnx_model))
    onnx.checker.check_model(model)

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    assert [(v.name, dims(v)) for v in model.graph.input] == [("image", ["batch", 2, "x", "y", "z"])]
    assert [(v.name, dims(v)) for v in model.graph.output] == [("pred", ["batch", 4, "x", "y", "z"])]


@pytest.mark.parametrize("shape", [(2, 2, 48, 32, 64), (1, 2, 37, 41, 30)], ids=["batch2-48x32x64", "odd-37x41x30"])
def test_onnxruntime_matches_pytorch(onnx_model, weights, shape):
    """Exported at batch 1, 32^3; run by ONNX Runtime at other batch sizes and spatial sizes, odd ones included."""
    from scripts.export import OnnxRuntimeNetwork

    _, net = weights
    x = torch.randn(shape)
    with torch.no_grad():
        expected = net(x)
    got = OnnxRuntimeNetwork(str(onnx_model), num_threads=1)(x)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < 1e-3


def test_onnx_segmenter_is_the_segmenter(weights):
    """The export-friendly forward gives the PyTorch network's outputs (and loads its checkpoints)."""
    from scripts.export import OnnxSegmenter

    _, net = weights
    twin = OnnxSegmenter(2, 4, features=network_features(SHIPPED)).eval()
    twin.load_state_dict(net.state_dict())
    with torch.no_grad():
        for shape in [(1, 2, 16, 32, 48), (1, 2, 33, 47, 21)]:
            x = torch.randn(shape)
            torch.testing.assert_close(twin(x), net(x), rtol=0, atol=0)


def test_inference_onnx_config_matches_pytorch_inference(bundle_root, weights, onnx_model, tmp_path, monkeypatch):
    """configs/inference_onnx.yaml on top of inference.yaml: same label map and probabilities as the PyTorch run."""
    ckpt, _ = weights
    write_iseg(tmp_path / "iseg", num_labeled=1, num_unlabeled=0, shape=(40, 48, 56), seed=3)
    monkeypatch.chdir(bundle_root)
    common = {"dataset_dir": str(tmp_path / "iseg"), "dataset_format": "iseg", "save_probabilities": True}
    parser = _parser(bundle_root)
    parser.update(common)
    cropped = parser.get_parsed_content("dataset")[0]["image"].shape[1:]
    assert any(s % 8 for s in cropped), cropped  # the head-cropped window is not a multiple of 8

    run("inference", config_file="configs/inference.yaml", output_dir=str(tmp_path / "torch"), ckpt_path=str(ckpt),
        **common)  # fmt: skip
    run(
        "inference",
        config_file=["configs/inference.yaml", "configs/inference_onnx.yaml"],
        output_dir=str(tmp_path / "onnx"),
        ckpt_path=str(tmp_path / "missing.pt"),  # not read: the weights are in the ONNX file
        onnx_path=str(onnx_model),
        onnx_num_threads=1,
        **common,
    )
    seg_torch = nib.load(str(tmp_path / "torch" / "subject-1_seg.nii.gz"))
    seg_onnx = nib.load(str(tmp_path / "onnx" / "subject-1_seg.nii.gz"))
    assert seg_onnx.shape == seg_torch.shape == (40, 48, 56)
    assert (np.bincount(np.asarray(seg_torch.dataobj).ravel(), minlength=4) > 500).all()  # all four classes
    np.testing.assert_allclose(seg_onnx.affine, seg_torch.affine)
    agreement = (np.asarray(seg_onnx.dataobj) == np.asarray(seg_torch.dataobj)).mean()
    assert agreement > 0.999, agreement
    prob_torch = np.asarray(nib.load(str(tmp_path / "torch" / "subject-1_prob.nii.gz")).dataobj)
    prob_onnx = np.asarray(nib.load(str(tmp_path / "onnx" / "subject-1_prob.nii.gz")).dataobj)
    np.testing.assert_allclose(prob_onnx, prob_torch, atol=1e-4)
