"""MRI and tissues transfer (configs/synthesize.yaml) on tiny phantoms, run as a user runs it."""

import hashlib
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import run
from monai.inferers import SlidingWindowInferer

from scripts.data.phantom import write_iseg
from scripts.networks import MRIGANGenerator, Segmenter, class_intensity_statistics, tissue_onehot
from scripts.synthesis import SynthesisInputs, SynthesisNetwork, subject_id, synthesis_pairs

GENERATOR = {"features": (8, 16), "code_dim": 4, "noise_dim": 2}  # small, so CPU runs take seconds
TINY = [
    "--gan#generator_features", "[8,16]", "--gan#tissue_code_dim", "4", "--gan#noise_dim", "2", "--patch_size", "[16,16,16]",
    "--device", "cpu",
]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Label maps of two subjects (32x40x48) and the MRIs of other subjects of another size (40x32x44)."""
    root = tmp_path_factory.mktemp("synthesis")
    write_iseg(root / "labelled", num_labeled=2, num_unlabeled=0, shape=(32, 40, 48), seed=1)
    write_iseg(root / "sources", num_labeled=0, num_unlabeled=2, shape=(40, 32, 44), seed=2)
    torch.save({"generator": _random_generator().state_dict()}, root / "generator.pt")
    return root


def _random_generator(source_statistics=True):
    """A small generator whose GT-Layers depend on the tissue code and noise (at initialisation they do not); with
    the source's statistics, as train.yaml's default."""
    torch.manual_seed(0)
    generator = MRIGANGenerator(2, 4, **GENERATOR, source_statistics=source_statistics).eval()
    for name, param in generator.named_parameters():
        if ".r_sigma.2." in name or ".r_mu.2." in name:
            torch.nn.init.normal_(param, std=0.3)
    return generator


def _synthesize(bundle_root, *args):
    # one thread: on a busy CI machine two OpenMP threads fighting for cores make each window ~30x slower
    env = dict(os.environ, PYTHONPATH=str(bundle_root), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "synthesize", "--config_file", "configs/synthesize.yaml",
         *TINY, *args],
        cwd=bundle_root, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_writes_one_volume_per_label_map_and_refuses_to_overwrite(bundle_root, data, tmp_path):
    labels = [data / "labelled" / f"subject-{i}-label.hdr" for i in (1, 2)]
    source = [str(data / "sources" / f"subject-2-{m}.hdr") for m in ("T1", "T2")]
    args = ["--label_files", str([str(p) for p in labels]), "--source_files", str([source]),
            "--output_dir", str(tmp_path), "--ckpt_path", str(data / "generator.pt")]  # fmt: skip
    inputs_before = {p.name: _digest(p) for p in (data / "labelled").iterdir()}
    proc = _synthesize(bundle_root, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outputs = sorted(tmp_path.iterdir())
    assert [p.name for p in outputs] == [f"subject-{i}_from_subject-2_synth.nii.gz" for i in (1, 2)]
    for label, output in zip(labels, outputs):
        label_img, out_img = nib.load(str(label)), nib.load(str(output))
        assert out_img.shape == (*label_img.shape, 2)  # one channel per modality, on the label map's grid
        np.testing.assert_allclose(out_img.affine, label_img.affine, atol=1e-4)
        values = out_img.get_fdata(dtype=np.float32)
        assert out_img.get_data_dtype() == np.float32 and np.isfinite(values).all()
        assert values.min() >= -1.0 and values.max() <= 1.0 and values.std() > 0.01
    assert {p.name: _digest(p) for p in (data / "labelled").iterdir()} == inputs_before

    before = _digest(outputs[0])
    proc = _synthesize(bundle_root, *args)
    assert proc.returncode != 0
    assert f"{outputs[0]} already exists" in proc.stderr and "--overwrite" in proc.stderr
    assert _digest(outputs[0]) == before

    proc = _synthesize(bundle_root, *args, "--overwrite", "true", "--seed", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _digest(outputs[0]) != before  # replaced, with other noise


@pytest.mark.slow
@pytest.mark.parametrize("case", ["count", "missing_label", "missing_checkpoint", "wrong_checkpoint"])
def test_bad_input_fails_with_a_clear_message(bundle_root, data, tmp_path, case):
    label = str(data / "labelled" / "subject-1-label.hdr")
    sources = [[str(data / "sources" / f"subject-{i}-{m}.hdr") for m in ("T1", "T2")] for i in (1, 2)]
    ckpt = data / "generator.pt"
    expected = {
        "count": "got 1 label maps but 2 sources",
        "missing_label": f"input file {tmp_path / 'nope-label.hdr'} not found",
        "missing_checkpoint": f"generator checkpoint {tmp_path / 'none.pt'} not found",
        "wrong_checkpoint": f"{tmp_path / 'model.pt'} is not a generator checkpoint",
    }[case]
    if case == "missing_label":
        label = str(tmp_path / "nope-label.hdr")
    if case in ("missing_label", "missing_checkpoint", "wrong_checkpoint"):
        sources = sources[:1]
    if case == "missing_checkpoint":
        ckpt = tmp_path / "none.pt"
    if case == "wrong_checkpoint":
        ckpt = tmp_path / "model.pt"
        torch.save({"model": {}}, ckpt)
    proc = _synthesize(
        bundle_root, "--label_files", str([label]), "--source_files", str(sources),
        "--output_dir", str(tmp_path / "out"), "--ckpt_path", str(ckpt),
    )  # fmt: skip
    assert proc.returncode != 0
    assert expected in proc.stderr, proc.stderr[-2000:]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["error.log"]  # the traceback; no output written


class Oracle(torch.nn.Module):
    """Stands in for the generator: returns the source MRI, or each voxel's tissue index scaled to [-1, 1]."""

    def __init__(self, copy_source: bool):
        super().__init__()
        self.copy_source = copy_source

    def forward(self, mri, onehot, noise=None, source_stats=None):
        if self.copy_source:
            return mri.clone(), None
        index = (onehot * torch.arange(onehot.shape[1], dtype=onehot.dtype).view(1, -1, 1, 1, 1)).sum(1, keepdim=True)
        return (index * 2 / 3 - 1).expand_as(mri).clone(), None


def _box_centre(mask):
    return np.array([(np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))[[0, -1]]).mean()
                     for axis in range(3)])  # fmt: skip


@pytest.mark.parametrize("copy_source", [False, True])
def test_outputs_land_on_the_label_grid(bundle_root, data, tmp_path, monkeypatch, copy_source):
    """LPS, anisotropic NIfTI label map (codes 0..3), source of another size and orientation: the tissue oracle's
    output matches the label map voxel by voxel, and the copied source brain is centred on the label map's brain
    (given with its brain mask, which travels with the source to the k-means clusters on the source's grid)."""
    label = np.zeros((36, 30, 16), np.uint8)
    label[4:32, 4:26, 3:13] = 1
    label[8:28, 8:20, 4:11] = 2
    label[10:18, 10:16, 5:9] = 3  # off-centre: a flip or a shift would show
    affine = np.diag([-1.2, -0.9, 2.0, 1.0])
    affine[:3, 3] = [30.0, 20.0, -10.0]
    nib.save(nib.Nifti1Image(label, affine), str(tmp_path / "case07_label.nii.gz"))
    monkeypatch.chdir(bundle_root)
    t1 = nib.load(str(data / "sources" / "subject-1-T1.hdr"))
    mask = tmp_path / "subject-1-mask.nii.gz"
    nib.save(nib.Nifti1Image((np.asarray(t1.dataobj) > 0).astype(np.uint8), t1.affine), str(mask))
    run(
        "synthesize",
        mask_files=[str(mask)] if copy_source else None,
        config_file="configs/synthesize.yaml",
        label_files=[str(tmp_path / "case07_label.nii.gz")],
        source_files=[str(data / "sources" / f"subject-1-{m}.hdr") for m in ("T1", "T2")],  # flat: one source
        dataset_format="folder",
        output_dir=str(tmp_path / "out"),
        generator=Oracle(copy_source),
        patch_size=[16, 16, 16],
        device="cpu",
    )
    out = nib.load(str(tmp_path / "out" / "case07_from_subject-1_synth.nii.gz"))
    assert out.shape == (*label.shape, 2)
    np.testing.assert_allclose(out.affine, affine, atol=1e-4)
    values = out.get_fdata()
    if copy_source:
        assert values.min() >= -1.0 and values.max() <= 1.0
        np.testing.assert_allclose(_box_centre(values.max(axis=-1) > -0.95), _box_centre(label > 0), atol=1.5)
        return
    expected = np.array([-1.0, -1 / 3, 1 / 3, 1.0])[label]
    for channel in range(2):
        assert np.isclose(values[..., channel], expected, atol=0.02).mean() > 0.99


def test_network_is_the_generator_on_one_window():
    generator = _random_generator(source_statistics=False)
    network = SynthesisNetwork(generator, in_channels=2)
    mri = torch.rand(2, 2, 16, 16, 16) * 2 - 1
    onehot = tissue_onehot(torch.randint(0, 4, (2, 1, 16, 16, 16)), 4)
    noise = torch.randn(1, 2)  # one draw per volume, shared by its windows
    with torch.no_grad():
        direct, _ = generator(mri, onehot, noise.expand(2, -1))
        wrapped = network(torch.cat([mri, onehot], dim=1), noise=noise)
        windowed = SlidingWindowInferer((16, 16, 16), overlap=0.5, mode="gaussian")(
            torch.cat([mri, onehot], dim=1)[:1], network, noise=noise
        )
    assert wrapped.shape == (2, 2, 16, 16, 16)
    torch.testing.assert_close(wrapped, direct)
    torch.testing.assert_close(windowed, direct[:1], rtol=1e-4, atol=1e-5)


def test_source_statistics_of_the_whole_source_reach_every_window():
    """For a source_statistics generator, SynthesisInputs gives every window the class-wise statistics of the whole
    source volume under the segmenter's probabilities."""
    torch.manual_seed(0)
    generator = MRIGANGenerator(2, 4, **GENERATOR, source_statistics=True).eval()
    segmenter = Segmenter(2, 4, features=(4, 8)).eval()
    mri = torch.rand(1, 2, 16, 16, 32) * 2 - 1
    onehot = tissue_onehot(torch.randint(0, 4, (1, 1, 16, 16, 32)), 4)
    image = torch.cat([mri, onehot], dim=1)
    _, _, _, kwargs = SynthesisInputs(0, segmenter, in_channels=2)({"image": image, "label": onehot[:, :1]})
    with torch.no_grad():
        stats = class_intensity_statistics(mri, torch.softmax(segmenter(mri), 1))[:2]
        windowed = SlidingWindowInferer((16, 16, 16), overlap=0.5, mode="gaussian")(
            image, SynthesisNetwork(generator, 2), **kwargs
        )
        left = generator(mri[..., :16], onehot[..., :16], source_stats=stats)[0]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(kwargs["source_stats"], stats))
    torch.testing.assert_close(windowed[..., :8], left[..., :8], rtol=1e-4, atol=1e-5)  # where one window counts


def test_source_statistics_from_clusters_need_no_segmenter():
    """source_classes 'clusters': the statistics of the whole source under its k-means tissue classes, which on a
    layered brain are its tissues, so the statistics are those under the true tissue map."""
    from test_transforms import _layered_brain

    mri, label = _layered_brain((0.2, 0.3), (0.6, 0.0))
    image = torch.cat([mri, tissue_onehot(label[None, None], 4)[0]])[None]
    _, _, _, kwargs = SynthesisInputs(0, None, in_channels=2, clusters=True)({"image": image, "label": label[None, None]})
    expected = class_intensity_statistics(mri[None], tissue_onehot(label[None, None], 4))[:2]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(kwargs["source_stats"], expected))
    assert SynthesisInputs(0, None, in_channels=2)({"image": image, "label": label[None, None]})[3]["source_stats"] is None


def test_source_classes_of_synthesis_are_those_of_training_refined_by_depth():
    """With ``depth`` (synthesize.yaml's gan#clusters_depth, as in training) the statistics are taken under the
    k-means classes re-split by depth (``split_by_depth``): on an isointense layered brain not k-means' own."""
    from test_transforms import _layered_brain

    from scripts.transforms import split_by_depth, tissue_clusters

    mri, label = _layered_brain((0.4, 0.4), (0.4, 0.4))
    image = torch.cat([mri, tissue_onehot(label[None, None], 4)[0]])[None]
    batch = {"image": image, "label": label[None, None]}
    classes = split_by_depth(mri, tissue_clusters(mri), 3.0)
    expected = class_intensity_statistics(mri[None], tissue_onehot(classes[None], 4))[:2]
    found = SynthesisInputs(0, None, in_channels=2, clusters=True, depth=3.0)(batch)[3]["source_stats"]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(found, expected))
    plain = SynthesisInputs(0, None, in_channels=2, clusters=True)(batch)[3]["source_stats"]
    assert not torch.allclose(plain[1], found[1], atol=1e-3)


def test_clusters_of_a_whole_head_source_stay_inside_its_brain_mask():
    """A bright scalp shell around the layered brain: without the batch's ``mask`` k-means clusters it with the
    tissues and the statistics move; with the mask they are the true tissues' again."""
    from test_transforms import _layered_brain

    mri, label = _layered_brain((0.2, 0.3), (0.6, 0.0))
    radius = torch.stack(torch.meshgrid(*[torch.arange(32.0) - 16] * 3, indexing="ij")).norm(dim=0)
    mri[:, (radius >= 15) & (radius < 16)] = 0.95  # scalp
    image = torch.cat([mri, tissue_onehot(label[None, None], 4)[0]])[None]
    batch = {"image": image, "label": label[None, None]}
    expected = class_intensity_statistics(mri[None], tissue_onehot(label[None, None], 4))[:2]
    inputs = SynthesisInputs(0, None, in_channels=2, clusters=True)
    head = inputs(batch)[3]["source_stats"]
    assert not all(torch.allclose(a, b, atol=1e-3) for a, b in zip(head, expected))
    brain = inputs({**batch, "mask": (label > 0)[None, None].float()})[3]["source_stats"]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(brain, expected))


def test_pairs_names_and_checks(tmp_path):
    files = {}
    for name in ("subject-1-label", "subject-12-T1", "subject-12-T2"):
        for ext in (".hdr", ".img"):
            (tmp_path / f"{name}{ext}").touch()
        files[name] = str(tmp_path / f"{name}.hdr")
    source = [files["subject-12-T1"], files["subject-12-T2"]]
    entries = synthesis_pairs([files["subject-1-label"]], [source], ["t1", "t2"], tmp_path / "out")
    assert entries == [{"subject": "subject-1_from_subject-12", "label": files["subject-1-label"],
                        "t1": source[0], "t2": source[1]}]  # fmt: skip
    assert synthesis_pairs(files["subject-1-label"], source, ["t1", "t2"], tmp_path / "out") == entries
    with pytest.raises(ValueError, match="has 1 files but modalities"):
        synthesis_pairs([files["subject-1-label"]], [[source[0]]], ["t1", "t2"], tmp_path / "out")
    mask = tmp_path / "subject-12-mask.nii.gz"
    mask.touch()
    with_mask = synthesis_pairs([files["subject-1-label"]], [source], ["t1", "t2"], tmp_path / "out",
                                mask_files=[str(mask)])  # fmt: skip
    assert with_mask == [{**entries[0], "mask": str(mask)}]
    with pytest.raises(ValueError, match="got 1 sources but 2 brain masks"):
        synthesis_pairs([files["subject-1-label"]], [source], ["t1", "t2"], tmp_path / "out", mask_files=[mask, mask])
    with pytest.raises(FileNotFoundError, match="nope-mask.nii.gz not found"):
        synthesis_pairs([files["subject-1-label"]], [source], ["t1", "t2"], tmp_path / "out",
                        mask_files=str(tmp_path / "nope-mask.nii.gz"))  # fmt: skip
    (tmp_path / "subject-12-T2.img").unlink()
    with pytest.raises(FileNotFoundError, match="subject-12-T2.hdr has no subject-12-T2.img"):
        synthesis_pairs([files["subject-1-label"]], [source], ["t1", "t2"], tmp_path / "out")
    assert subject_id("/d/TrainingData/4/LabelsForTraining.nii") == "TrainingData-4"
    assert subject_id("/d/training/070/pre/reg_T1.nii.gz") == "training-070"
    assert subject_id("/d/case01_T2.nii.gz") == "case01"
