"""MixUp and CutMix of a training batch (train/mixing.py): what the images become, the loss on
both labels, and a run from the command line that records them."""
import json

import pytest
import torch
from conftest import make_ham_folder, run_train

from train.mixing import Mixing, mixed_loss


def batch() -> torch.Tensor:
    """Four images, each one flat value (0, 1, 2, 3): every pixel says whose it is."""
    return torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 16, 16).clone()


def test_mixup_blends_each_image_with_the_reversed_batchs_by_the_drawn_share():
    x = batch()
    lam = Mixing(mixup=0.4, cutmix=0.0, seed=1)(x)
    assert 0 < lam < 1
    own, other = torch.arange(4.0), torch.arange(4.0).flip(0)
    assert torch.allclose(x[:, 0, 0, 0], lam * own + (1 - lam) * other)
    assert torch.allclose(x, x[:, :, :1, :1].expand_as(x))  # the same blend over the whole image


def test_cutmix_pastes_a_box_of_the_reversed_batchs_image_and_lambda_is_what_stays_own():
    lams = []
    for seed in range(5):
        x = batch()
        lam = Mixing(mixup=0.0, cutmix=1.0, seed=seed)(x)
        own = (x == torch.arange(4.0).view(4, 1, 1, 1)).float().mean(dim=(1, 2, 3))
        other = (x == torch.arange(4.0).flip(0).view(4, 1, 1, 1)).float().mean(dim=(1, 2, 3))
        assert torch.allclose(own + other, torch.ones(4))  # every pixel is one image's or the other's
        assert own[0].item() == pytest.approx(lam)  # the share corrected to the box that fitted
        lams.append(lam)
    assert len(set(lams)) > 1


def test_both_off_leaves_the_batch_alone_and_both_on_draws_each_kind():
    x = batch()
    assert Mixing(0.0, 0.0)(x) == 1.0 and torch.equal(x, batch())
    mixing = Mixing(mixup=0.4, cutmix=1.0, seed=0)
    kinds = set()
    for _ in range(20):
        x = batch()
        mixing(x)
        kinds.add("cutmix" if (x[0] == 0).any() else "mixup")  # CutMix keeps some of image 0's own pixels
    assert kinds == {"mixup", "cutmix"}


def test_the_loss_weighs_the_recipes_criterion_on_both_labels_by_the_share():
    torch.manual_seed(0)
    criterion = torch.nn.CrossEntropyLoss(weight=torch.rand(7) + 0.5, label_smoothing=0.1)
    logits, y = torch.randn(6, 7), torch.randint(0, 7, (6,))
    expected = 0.3 * criterion(logits, y) + 0.7 * criterion(logits, y.flip(0))
    assert torch.allclose(mixed_loss(criterion, 0.3)(logits, y), expected)
    assert mixed_loss(criterion, 1.0) is criterion


@pytest.mark.slow
def test_a_run_with_mixed_batches_finishes_and_its_folder_records_them(tmp_path):
    data = make_ham_folder(tmp_path / "ham", per_class=20)
    out = tmp_path / "mixed"
    result = run_train("--data", data, "--out", out, "--epochs", "1", "--image-size", "32", "--batch-size", "16",
                       "--workers", "0", "--mixup", "0.2", "--cutmix", "1.0", "--no-explanations")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mixing: MixUp α 0.2, CutMix α 1.0" in result.stderr
    training = json.loads((out / "model" / "config.json").read_text())["training"]
    assert (training["mixup"], training["cutmix"]) == (0.2, 1.0)
    assert "MixUp α 0.2, CutMix α 1.0" in (out / "model" / "README.md").read_text()
