"""The semi-supervised GAN trainer on tiny in-memory batches: what each step updates, warm-up, non-finite losses."""

import copy
import math

import pytest
import torch
import torch.distributed as dist
from ignite.engine import Events

from scripts.engines.gan import SemiSupervisedGanTrainer, frozen
from scripts.losses import DiscriminatorLoss, GeneratorLoss, LabelledSegmentationLoss, unlabelled_loss
from scripts.networks import MRIGANGenerator, Segmenter, StandardGANGenerator
from scripts.networks.generators import class_intensity_statistics, tissue_onehot

PATCH = (8, 8, 8)


def _batches(n, with_label=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        item = {"image": torch.rand(2, 2, *PATCH, generator=g) * 2 - 1}
        if with_label:
            item["label"] = torch.randint(0, 4, (2, 1, *PATCH), generator=g)
        out.append(item)
    return out


def _trainer(generator="mri", unlabeled=True, max_epochs=1, **kwargs):
    torch.manual_seed(0)
    net = Segmenter(2, 4, features=(4, 8))
    gen = {"mri": lambda: MRIGANGenerator(2, 4, features=(4, 8), code_dim=4, noise_dim=2),
           "standard": lambda: StandardGANGenerator(2, PATCH, noise_dim=8, features=(8, 4, 4)),
           None: lambda: None}[generator]()  # fmt: skip
    trainer = SemiSupervisedGanTrainer(
        device="cpu",
        max_epochs=max_epochs,
        train_data_loader=_batches(2),
        unlabeled_data_loader=_batches(1, with_label=False, seed=1) if unlabeled else None,
        network=net,
        d_optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        d_loss_function=DiscriminatorLoss(),
        generator=gen,
        g_optimizer=torch.optim.SGD(gen.parameters(), lr=0.1) if gen is not None else None,
        g_loss_function=GeneratorLoss() if gen is not None else None,
        **kwargs,
    )
    return trainer, net, gen


def _params(module):
    return [p.detach().clone() for p in module.parameters()]


def _changed(before, module):
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


@pytest.mark.parametrize("kind", ["mri", "standard"])
def test_one_epoch_updates_both_networks_and_logs_every_term(kind):
    trainer, net, gen = _trainer(kind)
    d0, g0 = _params(net), _params(gen)
    trainer.run()
    assert _changed(d0, net) and _changed(g0, gen)
    out = trainer.state.output[0]  # a one-item list, as MONAI's from_engine(keys, first=True) reads it
    assert {"loss_d_labelled", "loss_d_unlabelled", "loss_d_fake", "loss_g_feature_matching"} <= set(out)
    assert ("loss_g_boundary" in out) == (kind == "mri")
    assert out["fake"].shape == out["image"].shape
    assert math.isclose(float(out["loss"]), float(out["loss_d_total"]))
    assert trainer.state.iteration == 2 and trainer.state.nonfinite_steps == 0


def test_one_iteration_with_every_term_updates_both_networks_from_one_real_pass_of_d():
    """One iteration with every loss term on: exactly these output keys, both networks updated, and D's logits on
    the labelled and unlabelled patches from one training-mode pass over both (the generated patches apart)."""
    trainer, net, gen = _trainer("mri", epoch_length=1)
    trainer.d_loss_function.weights["synthetic"] = 1.0
    trainer.g_loss_function.weights.update(reconstruction=1.0, segmentation=1.0, appearance=1.0)
    untrained = copy.deepcopy(net)
    d0, g0 = _params(net), _params(gen)
    trainer.run()
    out = trainer.state.output[0]
    d_terms = ["labelled", "unlabelled", "fake", "synthetic", "total"]
    g_terms = ["feature_matching", "adversarial", "segmentation", "appearance", "boundary", "reconstruction", "total"]
    assert set(out) == {"image", "label", "fake", "fake_label", "pred", "loss",
                        *(f"loss_d_{k}" for k in d_terms), *(f"loss_g_{k}" for k in g_terms)}  # fmt: skip
    assert _changed(d0, net) and _changed(g0, gen) and trainer.state.nonfinite_steps == 0
    unlabeled = _batches(1, with_label=False, seed=1)[0]["image"]
    with torch.no_grad():
        logits = untrained(torch.cat([out["image"], unlabeled]))
    assert torch.allclose(out["pred"], logits[:2], atol=1e-6)
    assert torch.allclose(out["loss_d_unlabelled"], unlabelled_loss(logits[2:]), atol=1e-6)


def _collated_metatensors(batch):
    """``batch`` as MONAI's DataLoader collates it: MetaTensors whose metadata is a list with one item per patch."""
    from monai.data import MetaTensor, list_data_collate

    n = next(iter(batch.values())).shape[0]
    items = [{k: MetaTensor(v[i], affine=torch.eye(4), meta={"filename_or_obj": f"s{i}.nii.gz", "patch_index": i})
              for k, v in batch.items()} for i in range(n)]  # fmt: skip
    return list_data_collate(items)


@pytest.mark.parametrize("fakes, reconstructions, source_statistics", [
    (2, None, None), (2, None, "segmenter"), (1, 1, "segmenter"), (None, 1, None), (1, None, "clusters"),
])  # fmt: skip
def test_fake_patches_renders_fewer_fakes_from_maps_of_the_batch(fakes, reconstructions, source_statistics):
    """``fake_patches`` of 4 labelled patches (MetaTensors, as collated; ``None``: all): that many fakes, each map
    one of the batch's, and every term of both steps computed on them (the fakes' source statistics too, from the
    segmenter or from the unlabelled batch's collated clusters map), beside ``reconstruction_patches``
    reconstructions in the same generator pass (``None``: all)."""
    trainer, net, gen = _trainer("mri", epoch_length=1, fake_patches=fakes, reconstruction_patches=reconstructions,
                                 flip_maps=False)  # fmt: skip
    g = torch.Generator().manual_seed(0)  # 4 labelled and 4 unlabelled patches, collated as a DataLoader does
    trainer.data_loader = [_collated_metatensors({"image": torch.rand(4, 2, *PATCH, generator=g) * 2 - 1,
                                                  "label": torch.randint(0, 4, (4, 1, *PATCH), generator=g)})]
    trainer.unlabeled_data_loader = [_collated_metatensors({"image": torch.rand(4, 2, *PATCH, generator=g) * 2 - 1,
                                                            "clusters": torch.randint(0, 4, (4, 1, *PATCH), generator=g)})]
    if source_statistics:
        gen = trainer.generator = MRIGANGenerator(2, 4, features=(4, 8), code_dim=4, source_statistics=True)
        trainer.g_optimizer = torch.optim.SGD(gen.parameters(), lr=0.1)
        trainer.source_classes = source_statistics
    trainer.d_loss_function.weights["synthetic"] = 1.0
    trainer.g_loss_function.weights.update(reconstruction=1.0, segmentation=1.0, appearance=1.0)
    d0, g0 = _params(net), _params(gen)
    trainer.run()
    out = trainer.state.output[0]
    assert out["fake"].shape == (fakes or 4, *out["image"].shape[1:]) and out["fake_label"].shape[0] == (fakes or 4)
    assert any(torch.equal(out["fake_label"][0], label) for label in out["label"])
    assert out["image"].meta["filename_or_obj"] == [f"s{i}.nii.gz" for i in range(4)]  # the batch's, for handlers
    assert all(torch.isfinite(v) for k, v in out.items() if k.startswith("loss_"))
    assert float(out["loss_d_synthetic"]) > 0 and _changed(d0, net) and _changed(g0, gen)
    with pytest.raises(ValueError, match="fake_patches must be at least 1"):
        _trainer("mri", fake_patches=0)


def test_fake_transform_changes_only_the_patches_of_the_synthetic_term():
    """``fake_transform`` (here halving each fake) gives D's synthetic term its own copy of every fake, one fake at a
    time; the fakes G is judged on (``fake``) stay as rendered; the synthetic loss is D's on the transformed ones."""
    from monai.transforms import Lambdad

    calls = []
    halve = Lambdad("image", lambda x: calls.append(x.shape) or x * 0.5)
    trainer, net, _ = _trainer("mri", epoch_length=1, fake_transform=halve)
    trainer.d_loss_function.weights["synthetic"] = 1.0
    untrained = copy.deepcopy(net)
    trainer.run()
    out = trainer.state.output[0]
    assert calls == [out["fake"].shape[1:]] * 2  # per fake, not per batch
    assert torch.allclose(out["synthetic"], out["fake"] * 0.5)
    with torch.no_grad():  # D in training mode: batch norm normalises the generated pass by its own statistics
        expected = trainer.d_loss_function.labelled(untrained(out["synthetic"]), out["fake_label"])
    assert torch.allclose(out["loss_d_synthetic"], expected, atol=1e-5)


def test_supervised_mode_has_only_the_labelled_term():
    trainer, net, _ = _trainer(None, unlabeled=False)
    d0 = _params(net)
    trainer.run()
    assert _changed(d0, net)
    terms = {k for k in trainer.state.output[0] if k.startswith("loss_")}
    assert terms == {"loss_d_labelled", "loss_d_total"}


def test_warmup_trains_discriminator_on_labelled_patches_only():
    trainer, _, gen = _trainer("mri", warmup_iterations=1, max_epochs=1)
    trainer.d_loss_function.weights["synthetic"] = 1.0
    seen = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(set(e.state.output[0])))
    g0 = _params(gen)
    trainer.run()
    assert "loss_d_fake" not in seen[0] and "loss_d_unlabelled" not in seen[0]
    assert "loss_g_total" in seen[0]  # the generator trains during the warm-up
    assert {"loss_d_fake", "loss_d_unlabelled", "loss_d_synthetic"} <= seen[1]
    assert _changed(g0, gen)


def test_loss_functions_go_to_the_training_device():
    """Class weights are a buffer of the losses: the trainer moves both losses to its device (the meta device stands
    in for a GPU, where CPU class weights made cross_entropy fail)."""
    weights = [0.33, 1.5, 0.83, 1.33]
    d_segmentation, g_segmentation = LabelledSegmentationLoss(weights), LabelledSegmentationLoss(weights)
    net, gen = Segmenter(2, 4, features=(4, 8)), MRIGANGenerator(2, 4, features=(4, 8), code_dim=4, noise_dim=2)
    SemiSupervisedGanTrainer(
        device=torch.device("meta"),
        max_epochs=1,
        train_data_loader=_batches(1),
        unlabeled_data_loader=_batches(1, with_label=False),
        network=net,
        d_optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        d_loss_function=DiscriminatorLoss(d_segmentation),
        generator=gen,
        g_optimizer=torch.optim.SGD(gen.parameters(), lr=0.1),
        g_loss_function=GeneratorLoss(segmentation=g_segmentation),
    )
    for loss in (d_segmentation, g_segmentation):
        assert loss.cross_entropy.class_weights.device == torch.device("meta")


@pytest.mark.filterwarnings("ignore:.*CUDA is not available")
@pytest.mark.parametrize("dtype, scaled", [(torch.bfloat16, False), (torch.float16, True)])
def test_autocast_dtype_and_loss_scaling_follow_amp_kwargs(dtype, scaled):
    trainer = _trainer(None, unlabeled=False, amp=True, amp_kwargs={"dtype": dtype})[0]
    assert trainer._autocast().fast_dtype == dtype
    assert trainer.d_scaler.is_enabled() == (scaled and torch.cuda.is_available())


def test_gan_terms_ramp_in_linearly_after_the_warmup():
    trainer, _, _ = _trainer("mri", warmup_iterations=10, rampup_iterations=20)
    assert [trainer.gan_ramp(i) for i in (1, 10, 11, 20, 30, 31, 100)] == [0, 0, 0.05, 0.5, 1, 1, 1]
    assert _trainer("mri", warmup_iterations=10)[0].gan_ramp(11) == 1.0


def test_batch_norm_running_statistics_come_from_real_patches_only():
    """The generated patches' pass through D leaves the running statistics as the real patches' pass set them."""
    trainer, net, _ = _trainer("mri", max_epochs=1)
    trainer.d_loss_function.weights["synthetic"] = 1.0
    real_only, _, _ = _trainer("mri", max_epochs=1)
    real_only.d_loss_function.weights.update(fake=0.0, synthetic=0.0)
    bn = [k for k in net.state_dict() if k.endswith("running_mean")]
    after_first = {}
    for t in (trainer, real_only):
        t.add_event_handler(Events.ITERATION_COMPLETED(once=1), lambda e: after_first.setdefault(
            id(e), {k: v.clone() for k, v in e.network.state_dict().items()}))
        t.run()
    first, second = after_first[id(trainer)], after_first[id(real_only)]
    assert bn and all(torch.allclose(first[k], second[k]) for k in bn)


def test_generated_maps_are_flipped_copies_of_the_labels():
    trainer, _, _ = _trainer("mri")
    label = torch.arange(2 * 4 * 3 * 2).view(2, 1, 4, 3, 2).repeat(50, 1, 1, 1, 1)
    maps = trainer._target_maps(label)
    flipped = [torch.equal(m, l.flip(1)) for m, l in zip(maps, label)]
    assert all(f or torch.equal(m, l) for f, m, l in zip(flipped, maps, label))
    assert 10 < sum(flipped) < 90


def test_generator_step_leaves_discriminator_and_its_statistics_alone():
    _, net, _ = _trainer("mri")
    net.train()
    before = copy.deepcopy(net.state_dict())
    with frozen(net):
        assert not net.training and not any(p.requires_grad for p in net.parameters())
        net(torch.randn(2, 2, *PATCH)).sum()
    assert net.training and all(p.requires_grad for p in net.parameters())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_non_finite_loss_skips_the_update_and_is_counted(caplog):
    trainer, net, _ = _trainer("mri", max_nonfinite=5)
    trainer.d_loss_function.weights["labelled"] = float("nan")
    d0 = _params(net)
    trainer.run()
    assert not _changed(d0, net)
    assert trainer.state.nonfinite_steps == 2
    assert "non-finite discriminator loss (total nan) at iteration 1" in caplog.text


def test_non_finite_generator_loss_skips_only_the_generator_update(caplog):
    trainer, net, gen = _trainer("mri", max_nonfinite=5)
    trainer.g_loss_function.weights["feature_matching"] = float("nan")
    d0, g0 = _params(net), _params(gen)
    trainer.run()
    assert _changed(d0, net) and not _changed(g0, gen)
    assert trainer.state.nonfinite_steps == 2
    assert "non-finite generator loss (total nan) at iteration 1" in caplog.text
    assert "non-finite discriminator loss" not in caplog.text


@pytest.fixture
def one_process_group(tmp_path):
    """An initialised gloo process group of one process, as torchrun's processes have."""
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("other_finite", [True, False])
def test_non_finite_loss_in_another_process_skips_the_update_here_too(one_process_group, monkeypatch, caplog,
                                                                      other_finite):
    """Distributed, every process skips a step together (MAX all-reduce of the non-finite flag): one process that
    backpropagated alone would wait forever in DDP's gradient all-reduce. The other process is simulated by the flag
    it adds to the real gloo all-reduce of this one's."""
    ops, all_reduce = [], dist.all_reduce

    def with_another_process(tensor, op=dist.ReduceOp.SUM, **kwargs):
        all_reduce(tensor, op=op, **kwargs)
        ops.append(op)
        tensor.copy_(torch.maximum(tensor, torch.tensor(0.0 if other_finite else 1.0)))

    monkeypatch.setattr(dist, "all_reduce", with_another_process)
    trainer, net, gen = _trainer("mri", max_nonfinite=5)
    d0, g0 = _params(net), _params(gen)
    trainer.run()
    assert ops == [dist.ReduceOp.MAX] * 4  # D's and G's step in each of the 2 iterations
    assert _changed(d0, net) == _changed(g0, gen) == other_finite
    assert trainer.state.nonfinite_steps == (0 if other_finite else 4)
    assert other_finite or "non-finite discriminator loss in another process at iteration 1" in caplog.text


def test_non_finite_input_leaves_batch_norm_statistics_untouched():
    """A NaN patch would write NaN into D's running statistics in the forward pass; the skipped step restores them."""
    trainer, net, _ = _trainer(None, unlabeled=False, max_nonfinite=5)
    batches = _batches(2)
    batches[1]["image"][0, 0, 0, 0, 0] = float("nan")
    trainer.set_data(batches)
    stats = {}
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: stats.setdefault(e.state.iteration, copy.deepcopy(net.state_dict())))
    trainer.run()
    assert trainer.state.nonfinite_steps == 1
    running = [k for k in stats[1] if k.endswith("running_mean")]
    assert running and all(torch.equal(stats[1][k], stats[2][k]) for k in running)  # iteration 2 (NaN) changed none
    assert all(torch.isfinite(v).all() for v in net.state_dict().values() if v.is_floating_point())


def test_consecutive_non_finite_losses_stop_training():
    trainer, _, _ = _trainer("mri", max_nonfinite=2)
    trainer.d_loss_function.weights["labelled"] = float("inf")
    with pytest.raises(RuntimeError, match="diverged"):
        trainer.run()


def test_mri_gan_needs_unlabelled_data():
    with pytest.raises(ValueError, match="unlabeled_data_loader"):
        _trainer("mri", unlabeled=False)


def test_permuted_fake_maps_exchange_tissues_and_keep_background():
    """Off-manifold fakes: the generator renders each map with its tissues (1..K-1) exchanged, background kept."""
    trainer, _, _ = _trainer("mri", fake_maps="permuted")
    seen = []
    trainer._generate = lambda maps, unlabeled, stats: (seen.append(maps) or torch.zeros(maps.shape[0], 2, *PATCH), None)
    target = torch.tensor([0, 1, 2, 3, 255]).repeat(6, 1).view(6, 1, 5, 1, 1)
    trainer._fake_class_patches(torch.ones(6, 2, 5, 1, 1), target, torch.zeros(1, 2, 5, 1, 1))
    maps = seen[0].flatten(1)
    assert (maps[:, 0] == 0).all() and (maps[:, 4] == 255).all()
    assert all(sorted(m[1:4].tolist()) == [1, 2, 3] for m in maps)
    with pytest.raises(ValueError, match="fake_maps"):
        _trainer("mri", fake_maps="other")


def test_random_warp_keeps_labels_and_moves_boundaries():
    from scripts.engines.gan import random_warp

    torch.manual_seed(0)
    label = torch.zeros(2, 1, 12, 12, 12, dtype=torch.long)
    label[:, :, :, :, 6:] = 3
    assert torch.equal(random_warp(label, 0.0), label)  # no displacement: identity (nearest, aligned corners)
    warped = random_warp(label, 2.0)
    assert warped.dtype == label.dtype and set(warped.unique().tolist()) <= {0, 3}
    assert not torch.equal(warped, label) and (warped == label).float().mean() > 0.7


@pytest.mark.parametrize("patches", [None, 2])
def test_reconstructions_share_the_fakes_generator_pass(patches):
    """One batched generator pass gives the fakes and the reconstructions, exactly as two separate passes would."""
    trainer, _, _ = _trainer("mri", reconstruction_patches=patches)
    gen = trainer.generator = MRIGANGenerator(2, 4, features=(4, 8), code_dim=4)  # no noise: both ways comparable
    trainer.g_loss_function.weights["reconstruction"] = 1.0
    first, other = _batches(1)[0], _batches(1, seed=2)[0]
    image, label, target = first["image"], first["label"], other["label"]
    unlabeled = _batches(1, with_label=False, seed=3)[0]["image"]
    image, label = torch.cat([image, image.flip(2)]), torch.cat([label, label.flip(2)])
    target = torch.cat([target, target])
    reconstruct = trainer._reconstruction_patches(image, label)
    assert reconstruct[0].shape[0] == (4 if patches is None else 2)
    assert all(any(torch.equal(r, i) for i in image) for r in reconstruct[0])  # patches of this batch
    fake, boundary, reconstruction = trainer._generate(target, unlabeled, reconstruct)
    alone_fake, alone_boundary = gen(trainer._sources(unlabeled, 4), tissue_onehot(target))
    assert torch.allclose(fake, alone_fake, atol=1e-5) and torch.allclose(boundary, alone_boundary, atol=1e-5)
    assert torch.allclose(reconstruction, gen(reconstruct[0], tissue_onehot(reconstruct[1]))[0], atol=1e-5)
    trainer.g_loss_function.weights["reconstruction"] = 0.0
    assert trainer._reconstruction_patches(image, label) is None


def test_generator_idle_until_its_start():
    """Before ``generator_start`` iterations G neither generates nor trains; D trains on labelled patches alone."""
    trainer, net, gen = _trainer("mri", generator_start=1)
    seen = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append((set(e.state.output[0]), _params(gen))))
    g0 = _params(gen)
    trainer.run()
    (first, g1), (second, g2) = seen
    assert "fake" not in first and not any(k.startswith("loss_g_") for k in first)
    assert all(torch.equal(a, b) for a, b in zip(g0, g1))  # idle in iteration 1
    assert "fake" in second and "loss_g_total" in second and any(not torch.equal(a, b) for a, b in zip(g1, g2))


def test_generator_updates_every_interval_and_renders_the_fakes_in_between():
    """generator_interval 2: in iteration 1 G renders the fakes D learns from but does not change; in iteration 2
    it updates. D learns from the fakes in both."""
    trainer, net, gen = _trainer("mri", generator_interval=2)
    trainer.d_loss_function.weights["synthetic"] = 1.0
    seen = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append((dict(e.state.output[0]), _params(gen))))
    g0 = _params(gen)
    trainer.run()
    (first, g1), (second, g2) = seen
    assert "fake" in first and not first["fake"].requires_grad and not any(k.startswith("loss_g_") for k in first)
    assert float(first["loss_d_synthetic"]) > 0  # the fakes still serve as labelled data
    assert all(torch.equal(a, b) for a, b in zip(g0, g1))
    assert "loss_g_total" in second and any(not torch.equal(a, b) for a, b in zip(g1, g2))
    with pytest.raises(ValueError, match="generator_interval"):
        _trainer("mri", generator_interval=0)


def test_source_statistics_come_from_the_segmenter_pooled_per_subject_and_known_tissues():
    """A source_statistics generator renders the fakes with the class-wise statistics of their sources under the
    frozen segmenter's probabilities, pooled over each subject's patches, and the reconstructions with their own
    labels' statistics; training with it updates both networks."""
    trainer, net, _ = _trainer("mri", source_group_size=2)
    gen = trainer.generator = MRIGANGenerator(2, 4, features=(4, 8), code_dim=4, source_statistics=True)
    trainer.g_optimizer = torch.optim.SGD(gen.parameters(), lr=0.1)
    trainer.g_loss_function.weights["reconstruction"] = 1.0
    batch, unlabeled = _batches(1)[0], _batches(1, with_label=False, seed=3)[0]["image"]  # one subject, 2 patches
    seen = []
    gen.register_forward_hook(lambda module, args, kwargs, out: seen.append(kwargs["source_stats"]), with_kwargs=True)
    stats = trainer._source_statistics(unlabeled, 2)
    trainer._generate(batch["label"], unlabeled, (batch["image"], batch["label"]), stats)
    with pytest.raises(ValueError, match="statistics"):  # the statistics are computed once, by the caller
        trainer._generate(batch["label"], unlabeled)
    with frozen(net), torch.no_grad():
        probs = torch.softmax(net(unlabeled), dim=1)
    both = class_intensity_statistics(unlabeled.transpose(0, 1).flatten(1, 2)[None], probs.transpose(0, 1).flatten(1, 2)[None])
    own = class_intensity_statistics(batch["image"], tissue_onehot(batch["label"]))
    for k in range(2):  # mean, std
        assert torch.allclose(seen[0][k][:2], both[k].expand(2, -1, -1), atol=1e-5)
        assert torch.allclose(seen[0][k][2:], own[k], atol=1e-6)
    d0, g0 = _params(net), _params(gen)
    trainer.run()
    assert _changed(d0, net) and _changed(g0, gen) and trainer.state.nonfinite_steps == 0


def test_gradient_scalers_are_saved_in_the_last_checkpoint_and_resumed(tmp_path):
    """float16 mixed precision: both scalers' scale and growth tracker go into last.pt and come back on resume."""
    from scripts.checkpoint import LastCheckpoint, resume

    def build(init_scale, max_epochs=1):
        trainer, net, gen = _trainer(max_epochs=max_epochs)
        trainer.d_scaler, trainer.g_scaler = (torch.amp.GradScaler("cpu", init_scale, growth_interval=3) for _ in "dg")
        return trainer, {"network": net, "generator": gen}

    trainer, objects = build(init_scale=256.0)
    LastCheckpoint(objects, tmp_path / "last.pt").attach(trainer)
    trainer.run()  # 2 steps each: the growth trackers are at 2
    fresh, fresh_objects = build(init_scale=2.0**16, max_epochs=2)  # trains on (a finished run is not resumed)
    resume(fresh, fresh_objects, tmp_path / "last.pt")
    for name in ("d_scaler", "g_scaler"):
        saved, resumed = getattr(trainer, name), getattr(fresh, name)
        assert resumed.get_scale() == saved.get_scale() == 256.0 and resumed.state_dict() == saved.state_dict()
        assert resumed.state_dict()["_growth_tracker"] == 2

    LastCheckpoint({}, tmp_path / "plain.pt")(_trainer()[0])  # a run without loss scaling (CPU, bfloat16) ...
    resume(fresh, {}, tmp_path / "plain.pt")
    assert fresh.d_scaler.get_scale() == 256.0  # ... leaves the scalers as they are


def test_contrast_swap_exchanges_grey_and_white_matter_statistics_and_is_the_appearance_target():
    """contrast_swap 1: every fake is rendered with its source's GM and WM statistics exchanged (CSF and background
    kept), and the generator's appearance term measures the fakes against those rendered statistics."""
    trainer, net, _ = _trainer("mri", source_group_size=2, contrast_swap=1.0)
    gen = trainer.generator = MRIGANGenerator(2, 4, features=(4, 8), code_dim=4, source_statistics=True)
    trainer.g_optimizer = torch.optim.SGD(gen.parameters(), lr=0.1)
    unlabeled = _batches(1, with_label=False, seed=3)[0]["image"]
    swapped = trainer._source_statistics(unlabeled, 2)
    trainer.contrast_swap = 0.0
    plain = trainer._source_statistics(unlabeled, 2)
    for s, p in zip(swapped, plain):
        assert torch.equal(s[:, [0, 1]], p[:, [0, 1]]) and torch.equal(s[:, [2, 3]], p[:, [3, 2]])
    seen = []
    trainer.g_loss_function.register_forward_hook(lambda m, args, kwargs, out: seen.append(kwargs["source_stats"]),
                                                  with_kwargs=True)  # fmt: skip
    trainer.contrast_swap = 1.0
    trainer.run()
    assert len(seen) == 2 and all(len(s) == 3 and s[0].shape == (2, 4, 2) for s in seen)


@pytest.mark.parametrize("target", ["labelled", "unlabelled"])
def test_feature_matching_target_is_the_labelled_batch_or_the_unlabelled_batch_under_its_clusters(target):
    """matching_target: the fakes' class-wise mean features (D frozen: eval mode) are matched to the labelled
    patches under their labels, or to the unlabelled patches under their k-means clusters; computed here by hand
    from D's features and ``class_feature_means``. Without a clusters map, 'unlabelled' names TissueClustersd."""
    from scripts.losses import class_feature_means

    trainer, net, gen = _trainer("mri", matching_target=target)
    g = torch.Generator().manual_seed(5)
    image, label = torch.rand(2, 2, *PATCH, generator=g) * 2 - 1, torch.randint(0, 4, (2, 1, *PATCH), generator=g)
    unlabeled = torch.rand(2, 2, *PATCH, generator=g) * 2 - 1
    clusters = torch.randint(0, 4, (2, 1, *PATCH), generator=g)
    trainer.state.iteration = 1
    fakes = trainer._generator_forward(image, label, unlabeled, clusters, updating_g=True)
    net.eval()
    with torch.no_grad():
        real, real_label = (image, label) if target == "labelled" else (unlabeled, clusters)
        real_means, real_present = class_feature_means(net.forward_features(real)[1]["last"], real_label, 4)
        fake_means, fake_present = class_feature_means(net.forward_features(fakes.image.detach())[1]["last"], fakes.target, 4)
    expected = ((real_means - fake_means) ** 2).mean(1)[real_present & fake_present].mean()
    output = {}
    assert trainer._generator_step(trainer, output, image, label, unlabeled, fakes, clusters)
    assert torch.allclose(output["loss_g_feature_matching"], expected, rtol=1e-5)
    if target == "unlabelled":
        with pytest.raises(KeyError, match="TissueClustersd"):
            trainer._generator_step(trainer, {}, image, label, unlabeled, fakes, None)
    with pytest.raises(ValueError, match="matching_target"):
        _trainer("mri", matching_target="sources")


def test_source_statistics_from_clusters_use_the_unlabelled_batch_map_not_the_segmenter():
    """source_classes 'clusters': the statistics are those of the batch's clusters map, pooled per subject; the
    segmenter is not consulted; a batch without the map stops with a message that names TissueClustersd."""
    trainer, net, _ = _trainer("mri", source_group_size=2, source_classes="clusters")
    gen = trainer.generator = MRIGANGenerator(2, 4, features=(4, 8), code_dim=4, source_statistics=True)
    trainer.g_optimizer = torch.optim.SGD(gen.parameters(), lr=0.1)
    unlabeled = _batches(1, with_label=False, seed=3)[0]
    unlabeled["clusters"] = torch.randint(0, 4, (2, 1, *PATCH), generator=torch.Generator().manual_seed(4))
    trainer.unlabeled_data_loader = [unlabeled]
    calls = []
    net.register_forward_hook(lambda *args: calls.append(1))
    image, clusters = trainer._next_unlabeled(trainer)
    assert torch.equal(clusters, unlabeled["clusters"])
    stats = trainer._source_statistics(image, 2, clusters)
    pooled = class_intensity_statistics(image, tissue_onehot(unlabeled["clusters"]), 2)
    assert not calls and all(torch.equal(a, b) for a, b in zip(stats, pooled))
    trainer.run()
    assert trainer.state.nonfinite_steps == 0
    trainer.unlabeled_data_loader, trainer._unlabeled_iter = [{"image": unlabeled["image"]}], None
    image, clusters = trainer._next_unlabeled(trainer)
    assert clusters is None
    with pytest.raises(KeyError, match="TissueClustersd"):
        trainer._source_statistics(image, 2, clusters)
