"""The generated world (synood_cli/world, issue 23): sets, determinism, captions, folders, lexicon."""

from __future__ import annotations

import numpy as np
import pytest

from synood_cli.errors import UsageError
from synood_cli.world import batches, scenes, shapes, spec
from synood_cli.world.generate import write_world


def test_world_has_the_promised_size_and_disjoint_sets():
    assert len(spec.KIND_NAMES) >= 40 and len(set(spec.KIND_NAMES)) == len(spec.KIND_NAMES)
    assert len(spec.CONTEXT_NAMES) >= 10
    ids, near, far = set(spec.ID_NAMES), set(spec.NEAR_NAMES), set(spec.FAR_NAMES)
    assert not (ids & near) and not (ids & far) and not (near & far)
    assert set(shapes.NEAR_OF.values()) <= ids  # every near-OOD kind is one detail away from an ID kind


def test_every_kind_draws_a_distinct_object_inside_the_canvas():
    masks = {}
    for label, kind in enumerate(spec.ID_NAMES):
        img, mask, attrs = spec.set_image(0, "id_val", label, 0)
        assert attrs["kind"] == kind
        masks[kind] = mask
    for set_name in ("near", "far"):
        for label, kind in enumerate(spec.SET_LABELS[set_name]):
            _, masks[kind], _ = spec.set_image(0, set_name, label, 0)
    for kind, mask in masks.items():
        assert 40 < mask.sum() < 0.6 * mask.size, kind
        # the context stays visible around the object: the image border is never covered
        assert not mask[0].any() and not mask[-1].any() and not mask[:, 0].any() and not mask[:, -1].any(), kind
    # same pose and place, two kinds: different masks (a near kind is not a copy of its ID kind)
    g = np.linspace(-1.2, 1.2, 96, dtype=np.float32)
    v, u = np.meshgrid(g, g, indexing="ij")
    for near, idk in shapes.NEAR_OF.items():
        assert (shapes.ALL_KINDS[near](u, v) != shapes.ALL_KINDS[idk](u, v)).sum() > 20, near


def test_images_are_a_function_of_seed_set_label_and_index_only():
    a = spec.set_image(3, "near", 4, 7)[0]
    for other in [(3, "near", 4, 6), (3, "far", 4, 7), (3, "id_val", 0, 0)]:  # drawn in between
        spec.set_image(*other)
    assert np.array_equal(spec.set_image(3, "near", 4, 7)[0], a)
    assert not np.array_equal(spec.set_image(4, "near", 4, 7)[0], a)  # another world seed
    assert not np.array_equal(spec.set_image(0, "id_train", 2, 1)[0], spec.set_image(0, "id_val", 2, 1)[0])  # train != val
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8


def test_caption_says_the_attributes_it_was_drawn_from():
    attrs = {"type": "object", "kind": "octagon", "colour": "orange", "context": "brick_wall", "size": "small",
             "fill": "striped", "pose": "tilted"}
    assert spec.caption(attrs) == "a small tilted orange striped octagon on a brick wall"
    attrs.update(size="medium", pose="upright", fill="solid")
    assert spec.caption(attrs) == "an orange octagon on a brick wall"
    assert spec.caption({"type": "empty", "context": "sky"}) == "an empty sky"
    assert spec.caption({"type": "pattern", "pattern": "zigzag", "colour": "blue"}) == "a blue zigzag pattern"
    # a drawn image's caption names its kind, colour and context
    _, _, attrs = spec.set_image(0, "id_val", spec.ID_NAMES.index("star"), 2)
    cap = spec.caption(attrs)
    assert "star" in cap.split() and attrs["colour"] in cap and scenes.CONTEXTS[attrs["context"]][1] in cap


def test_empty_contexts_and_patterns_have_no_object():
    for set_name in ("empty", "textures"):
        _, mask, attrs = spec.set_image(0, set_name, 1, 0)
        assert not mask.any() and attrs["type"] in ("empty", "pattern")


def test_training_batches_differ_only_in_the_object_inside_a_group():
    images, captions = batches.train_batch(0, 11, p_pattern=0.0, p_bare=0.0)
    assert images.shape == (128, 64, 64, 3) and len(set(captions)) == 128
    for g in range(8):
        group = captions[g * 16 : (g + 1) * 16]
        # drop the kind word (or the whole caption of an empty context): the rest is one caption
        rests = {" ".join(w for w in c.split() if w not in spec.KIND_NAMES and w not in ("a", "an")) for c in group if not c.startswith(("an empty", "empty"))}
        assert len(rests) == 1, rests
    again, captions2 = batches.train_batch(0, 11, p_pattern=0.0, p_bare=0.0)
    assert captions2 == captions and np.array_equal(again, images)


def test_lexicon_parses_as_a_word_list_and_holds_kinds_attributes_and_unseen_words():
    from synood_cli.lexicons import parse_word_list

    lex = parse_word_list("\n".join(spec.lexicon_lines()), name="world", source="world")
    assert set(spec.KIND_NAMES) <= set(lex.nouns)
    assert set(spec.COLOUR_NAMES) <= set(lex.adjectives) and "striped" in lex.adjectives
    assert "violin" in lex.nouns and "ancient" in lex.adjectives  # words that name nothing in the world
    seen = " ".join(spec.caption(spec.set_image(0, s, 0, i)[2]) for s in spec.SET_LABELS for i in range(3))
    assert "violin" not in seen


def test_write_world_writes_the_folder_layout_commands_read(tmp_path):
    from PIL import Image

    from synood_cli.data.folders import scan_folder

    out = tmp_path / "world"
    meta = write_world(out, seed=5, train=1, val=2, ood=1)
    val = scan_folder(out / "id" / "val")
    assert val.classes == sorted(spec.ID_NAMES) and len(val.files) == 2 * len(spec.ID_NAMES)
    assert len(scan_folder(out / "id" / "train").files) == len(spec.ID_NAMES)
    near = scan_folder(out / "ood" / "near")
    assert near.labels is None and len(near.files) == len(spec.NEAR_NAMES)
    for name, labels in (("far", spec.FAR_NAMES), ("textures", scenes.PATTERNS), ("empty", spec.CONTEXT_NAMES)):
        assert len(list((out / "ood" / name).glob("*.png"))) == len(labels)
    # the files are the images spec draws (PNG is lossless)
    label = spec.ID_NAMES.index("bell")
    on_disk = np.asarray(Image.open(out / "id" / "val" / "bell" / "bell_0001.png"))
    assert np.array_equal(on_disk, spec.set_image(5, "id_val", label, 1)[0])
    assert meta["near_kinds"]["chapel"] == "house"
    assert (out / "lexicon.txt").read_text().splitlines() == spec.lexicon_lines()
    rows = (out / "captions.tsv").read_text().splitlines()
    assert len(rows) == len(spec.ID_NAMES) * 3 + len(spec.NEAR_NAMES) + len(spec.FAR_NAMES) + len(scenes.PATTERNS) + len(spec.CONTEXT_NAMES)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    with pytest.raises(UsageError, match="already exists"):
        write_world(out, train=1, val=1, ood=1)
