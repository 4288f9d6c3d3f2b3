"""torchvision's detection recipe scaled to the batch and the epochs, only where the user set nothing."""
from archc.detection.recipe import detection_recipe


def test_recipe_scaled():
    s, line = detection_recipe(batch=8, epochs=26, steps_per_epoch=5000)
    assert s == {"optimizer": "sgd", "momentum": 0.9, "weight_decay": 1e-4, "lr": 0.01, "warmup_epochs": 1000 / 5000,
                 "schedule": "step", "milestones": [16, 22], "gamma": 0.1}
    assert "lr 0.01 (0.02 x batch 8 / 16)" in line and "x0.1 at epochs 16 and 22" in line
    assert "warm-up over 1000 steps" in line and "weight decay 0.0001" in line


def test_recipe_short_run_and_small_epoch():
    s, line = detection_recipe(batch=16, epochs=10, steps_per_epoch=25)
    assert s["milestones"] == [6, 8] and s["warmup_epochs"] == 24 / 25 and s["lr"] == 0.02


def test_recipe_leaves_what_the_user_set():
    s, line = detection_recipe(batch=16, epochs=10, steps_per_epoch=25, given={"lr", "schedule"})
    assert "lr" not in s and "schedule" not in s and "milestones" not in s and s["weight_decay"] == 1e-4
    assert "lr " not in line
    s, _ = detection_recipe(batch=16, epochs=10, steps_per_epoch=25, given={"optimizer"})
    assert set(s) == {"warmup_epochs", "schedule", "milestones", "gamma"}
