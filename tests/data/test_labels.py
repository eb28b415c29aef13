"""--class-names: what class folders mean to the model. Without it they are groups (no
label at all); with names in class order a folder named like a class gets that class;
with a mapping every folder gets its class index."""

import json

import numpy as np
import pytest

from sightline.data.labels import (ClassNames, check_class_count, folder_labels,
                                   parse_class_names)

EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
GROUPS = np.array([0, 0, 1, 1, 1, -1], np.int32)  # two folders and one top-level image


def test_without_class_names_folders_are_groups_not_labels():
    np.testing.assert_array_equal(folder_labels(None, ("faces", "non-faces"), GROUPS), -1)


def test_names_in_class_order_label_folders_named_like_classes():
    names = parse_class_names("angry,disgust,fear,happy,sad,surprise,neutral")
    assert names.names == EMOTIONS and names.names_for(7) == EMOTIONS
    np.testing.assert_array_equal(folder_labels(names, ("happy", "sad"), GROUPS),
                                  [3, 3, 4, 4, 4, -1])
    # No folder is a class: the names name the predictions, the folders stay groups.
    np.testing.assert_array_equal(folder_labels(names, ("faces", "non-faces"), GROUPS), -1)
    with pytest.raises(ValueError, match=r"class folder\(s\) faces are not among --class-names"):
        folder_labels(names, ("faces", "happy"), GROUPS)


def test_a_mapping_file_gives_every_folder_its_class(tmp_path):
    path = tmp_path / "classes.json"
    path.write_text(json.dumps({"faces": 3, "non-faces": 6}))
    names = parse_class_names(str(path))
    np.testing.assert_array_equal(folder_labels(names, ("faces", "non-faces"), GROUPS),
                                  [3, 3, 6, 6, 6, -1])
    assert names.names_for(7) == ("class 0", "class 1", "class 2", "faces", "class 4",
                                  "class 5", "non-faces")
    with pytest.raises(ValueError, match=r"has no class for folder\(s\) cats"):
        folder_labels(names, ("cats", "faces", "non-faces"), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"maps folder\(s\) non-faces that the data does not"):
        folder_labels(names, ("faces",), np.array([0]))
    check_class_count(names, 7)
    with pytest.raises(ValueError, match=r"maps folder 'non-faces' to class 6, but the model "
                                         r"has 5 classes \(0 to 4\)"):
        check_class_count(names, 5)


def test_toml_files_give_names_or_a_mapping(tmp_path):
    listed = tmp_path / "names.toml"
    listed.write_text('names = ["cat", "dog"]\n')
    assert parse_class_names(str(listed)) == ClassNames(names=("cat", "dog"), given=str(listed))
    mapped = tmp_path / "map.toml"
    mapped.write_text('cat = 1\ndog = 0\n')
    assert parse_class_names(str(mapped)).folders == {"cat": 1, "dog": 0}
    # From a --config file the value arrives already parsed.
    assert parse_class_names(["cat", "dog"]).names == ("cat", "dog")
    assert parse_class_names({"cat": 1}).folders == {"cat": 1}


@pytest.mark.parametrize("given, message", [
    ("cat,,dog", "one non-empty name per class"),
    ("cat,dog,cat", r"names a class twice \(cat\)"),
    ({"cat": -1}, r"maps folder 'cat' to -1"),
    ({"cat": True}, r"maps folder 'cat' to True"),
    ({}, "maps no folder"),
    ("nowhere.json", "--class-names file not found"),
])
def test_bad_class_names_are_one_clear_line(given, message):
    with pytest.raises(ValueError, match=message):
        parse_class_names(given)


def test_the_number_of_names_must_be_the_models():
    with pytest.raises(ValueError, match=r"gives 2 name\(s\) but the model has 7 classes"):
        check_class_count(parse_class_names("faces,non-faces"), 7)


def test_a_config_file_gives_class_names_as_a_list_or_a_table(tmp_path):
    import argparse

    from sightline.cli.explain import add_arguments, config_from_options, explain_options
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    listed = tmp_path / "listed.toml"
    listed.write_text('class_names = ["cat", "dog"]\n')
    mapped = tmp_path / "mapped.toml"
    mapped.write_text('[class_names]\ncat = 1\ndog = 0\n')
    config = config_from_options(explain_options(parser.parse_args(["--config", str(listed)])))
    assert config.class_names.names == ("cat", "dog")
    config = config_from_options(explain_options(parser.parse_args(["--config", str(mapped)])))
    assert config.class_names.folders == {"cat": 1, "dog": 0}
    # The flag wins over the file, as every flag does.
    args = parser.parse_args(["--config", str(listed), "--class-names", "ant,bee"])
    assert config_from_options(explain_options(args)).class_names.names == ("ant", "bee")
