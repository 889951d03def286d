"""digits.predict: Kaggle submissions, users' own digit pictures (any size, colour or
background) labelled as the model labels the arrays, test-time augmentation, and one clear
line with exit code 2 for each bad input."""

import csv

import numpy as np
import pytest
from PIL import Image

from digits import classifier, preparation, predict

DIGITS = 20  # the first MNIST test digits


def direct_labels(model, digits):
    return model.predict(digits[..., None], verbose=0).argmax(axis=1)


def write_kaggle_csv(path, digits):
    header = ",".join(preparation.PIXEL_COLUMNS)
    rows = [",".join(map(str, d.reshape(-1))) for d in digits]
    path.write_text("\n".join([header, *rows]) + "\n")


@pytest.mark.slow
def test_a_kaggle_csv_gives_a_submission_with_the_models_labels(digits_model, mnist, tmp_path, run_command):
    digits = mnist.x_test[:37]
    write_kaggle_csv(tmp_path / "test.csv", digits)
    code, out, err = run_command(predict.main, ["--model", digits_model.path, "--input", tmp_path / "test.csv",
                                                "--output", tmp_path / "submission.csv"])
    assert code == 0, err
    with open(tmp_path / "submission.csv") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["ImageId", "Label"]
    assert [int(r[0]) for r in rows[1:]] == list(range(1, 38))
    labels = [int(r[1]) for r in rows[1:]]
    assert all(0 <= label <= 9 for label in labels)
    assert labels == direct_labels(digits_model.model, digits).tolist()
    assert "Wrote 37 predictions to" in out


@pytest.mark.slow
def test_the_default_model_is_the_registered_champion(digits_model, mnist, tmp_path, run_command, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_kaggle_csv(tmp_path / "test.csv", mnist.x_test[:10])
    code, _, err = run_command(predict.main, ["--input", "test.csv", "--tracking-uri", digits_model.tracking_uri])
    assert code == 0, err
    labels = [int(r[1]) for r in list(csv.reader(open(tmp_path / "submission.csv")))[1:]]  # the default output
    assert labels == direct_labels(digits_model.model, mnist.x_test[:10]).tolist()


def variants(digit):
    """One MNIST digit as users' pictures might show it."""
    dark_on_light = 255 - digit
    big = Image.fromarray(dark_on_light).resize((200, 200), Image.Resampling.BICUBIC)
    off_centre = Image.new("L", (320, 240), 255)
    off_centre.paste(big, (110, 30))
    coloured = Image.merge("RGB", [Image.fromarray(255 - digit // 2), Image.fromarray(255 - digit),
                                   Image.fromarray(np.full_like(digit, 230))]).resize((90, 90))
    stroke = Image.new("RGBA", (112, 112), (0, 0, 0, 0))
    stroke.putalpha(Image.fromarray(digit).resize((112, 112), Image.Resampling.BILINEAR))
    return {"as_is.png": Image.fromarray(digit), "inverted.png": Image.fromarray(dark_on_light),
            "resized_off_centre.png": off_centre, "coloured.jpg": coloured, "transparent.png": stroke}


@pytest.mark.slow
def test_digit_pictures_get_the_labels_the_model_gives_the_arrays(digits_model, mnist, tmp_path, run_command):
    digits = mnist.x_test[:DIGITS]
    expected = {}
    for index, (digit, label) in enumerate(zip(digits, direct_labels(digits_model.model, digits))):
        for name, image in variants(digit).items():
            image.save(tmp_path / f"{index:02d}_{name}", quality=95)
            expected[f"{index:02d}_{name}"] = int(label)
    code, out, err = run_command(predict.main, ["--model", digits_model.path, "--input", tmp_path])
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == len(expected)
    got = {}
    for line in lines:
        path, label, top3 = line.split(maxsplit=2)
        got[path.rsplit("/", 1)[1]] = int(label)
        shown = [pair.split() for pair in top3.strip("()").split(", ")]
        assert len(shown) == 3 and int(shown[0][0]) == int(label)
        assert float(shown[0][1]) >= float(shown[1][1]) >= float(shown[2][1])
    assert got == expected


def test_preprocessing_recovers_the_mnist_digit_from_a_large_light_picture(mnist):
    for digit in mnist.x_test[:DIGITS]:
        picture = np.asarray(variants(digit)["resized_off_centre.png"], dtype=np.float32)
        recovered = preparation.to_mnist(picture).astype(np.float32)
        assert np.corrcoef(recovered.ravel(), digit.astype(np.float32).ravel())[0, 1] > 0.8
        row, col = preparation.centre_of_mass(recovered)
        assert abs(row - 14) < 1 and abs(col - 14) < 1


@pytest.mark.slow
def test_tta_views_are_true_shifts_and_average_to_probabilities(digits_model, mnist, tmp_path, run_command):
    digits = mnist.x_test[:5]
    shifted = classifier.transformed(digits[..., None], 0, 2, 0)[..., 0]
    expected = np.zeros_like(digits)
    expected[:, :, 2:] = digits[:, :, :-2]
    assert np.array_equal(shifted, expected)
    assert np.array_equal(classifier.transformed(digits[..., None], 0, 0, 0)[..., 0], digits)
    probability = classifier.probabilities(digits_model.model, digits, tta=True)
    assert probability.shape == (5, 10) and np.allclose(probability.sum(axis=1), 1, atol=1e-4)
    Image.fromarray(digits[0]).save(tmp_path / "seven.png")
    code, out, _ = run_command(predict.main, ["--model", digits_model.path, "--input", tmp_path / "seven.png",
                                              "--tta", "--output", tmp_path / "labels.csv"])
    assert code == 0 and out.split()[1] == str(probability[0].argmax())
    assert open(tmp_path / "labels.csv").readline().strip() == "file,label," + ",".join(f"p{d}" for d in range(10))


def bad_inputs(folder, digits_model):
    (folder / "notes.png").write_text("not an image at all")
    Image.new("L", (64, 64), 255).save(folder / "blank.png")
    one = Image.new("L", (64, 64), 255)
    one.paste(0, (28, 8, 36, 56))
    one.save(folder / "one.png")
    (folder / "short.csv").write_text("pixel0,pixel1,pixel2\n0,0,0\n")
    (folder / "train.csv").write_text("label," + ",".join(preparation.PIXEL_COLUMNS) + "\n")
    (folder / "empty_folder").mkdir()
    path = str(digits_model.path)
    uri = ["--tracking-uri", digits_model.tracking_uri]
    return {
        "a non-image file": (["--model", path, "--input", folder / "notes.png"], "notes.png: not a readable PNG or JPEG image"),
        "an empty image": (["--model", path, "--input", folder / "blank.png"], "blank.png: no digit found"),
        "a CSV with the wrong column count": (["--model", path, "--input", folder / "short.csv"], "it has 3 columns"),
        "Kaggle's train.csv": (["--model", path, "--input", folder / "train.csv"], "it has a 'label' column"),
        "a model URI that does not exist": (["--model", "models:/no-such-model@champion", "--input", folder / "one.png", *uri],
                                            "--model models:/no-such-model@champion: not found"),
        "an unknown run id": (["--model", "0" * 32, "--input", folder / "one.png", *uri], "not found"),
        "a missing model file": (["--model", folder / "gone.keras", "--input", folder / "one.png"], "not a models:/"),
        "a champion in a store that does not exist": (["--input", folder / "one.png", "--tracking-uri", f"sqlite:///{folder}/none/mlflow.db"],
                                                      "there is no MLflow store"),
        "a missing input": (["--model", path, "--input", folder / "gone.png"], "gone.png: no such file or folder"),
        "a folder without images": (["--model", path, "--input", folder / "empty_folder"], "no PNG or JPEG files"),
        "a CSV and images together": (["--model", path, "--input", folder / "short.csv", folder / "blank.png"], "one Kaggle CSV on its own"),
        "an output folder that does not exist": (["--model", path, "--input", folder / "short.csv", "--output", folder / "no" / "s.csv"], "does not exist"),
    }


@pytest.mark.slow
def test_bad_inputs_give_one_line_and_exit_code_2(digits_model, tmp_path, run_command):
    for case, (argv, message) in bad_inputs(tmp_path, digits_model).items():
        code, out, err = run_command(predict.main, argv)
        assert code == 2, case
        assert err.count("\n") == 1 and message in err and "Traceback" not in err, (case, err)
