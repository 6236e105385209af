"""The search request's hot path: the in-memory multipart parser, the numpy head, image links, the top-k scan."""

from __future__ import annotations

import io

import numpy as np
import pytest
from flask import Flask, url_for
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import MultiPartParser
from werkzeug.http import parse_options_header
from werkzeug.test import EnvironBuilder

from runtime import tfenv
from runtime.extractor import numpy_head
from runtime.products import ProductSearch, aggregate
from runtime.topk import exact_top_k, top_k
from service.api import IMAGE_PATH_SAFE, image_urls
from service.forms import parse_multipart
from tests.helpers import multipart

FORMS = [
    {"image": (io.BytesIO(b"\xff\xd8jpeg bytes\r\n--not-a-boundary\r\n"), "q.jpg")},
    {"image": (io.BytesIO(b""), "empty.jpg")},
    {"k": "5", "bbox": "0.1,0.2,0.6,0.9", "gender": ["Men", "Women"], "image": (io.BytesIO(b"abc"), "a b.png")},
    {"note": "ünïcode ✓", "empty": ""},
]


def werkzeug_parts(body: bytes, content_type: str) -> tuple[dict, dict]:
    """What Werkzeug's streaming parser makes of a body: fields and files (name -> [(filename, bytes)])."""
    boundary = parse_options_header(content_type)[1]["boundary"].encode()
    fields, files = MultiPartParser().parse(io.BytesIO(body), boundary, len(body))
    return ({k: fields.getlist(k) for k in fields},
            {k: [(f.filename, f.read()) for f in files.getlist(k)] for k in files})


@pytest.mark.parametrize("form", FORMS, ids=["jpeg", "empty-file", "fields-and-file", "unicode-fields"])
def test_multipart_parser_agrees_with_werkzeugs(form: dict) -> None:
    environ = EnvironBuilder(method="POST", data=form, content_type="multipart/form-data").get_environ()
    body, content_type = environ["wsgi.input"].read(), environ["CONTENT_TYPE"]
    fields, files = parse_multipart(body, parse_options_header(content_type)[1]["boundary"].encode())
    ours = ({k: fields.getlist(k) for k in fields}, {k: [(f.filename, f.read()) for f in files.getlist(k)]
                                                      for k in files})
    assert ours == werkzeug_parts(body, content_type)


def test_multipart_parser_reads_what_clients_send() -> None:
    body, content_type = multipart("image", "photo.jpg", b"\x00\x01binary\r\n\r\n")  # urllib-style, random boundary
    fields, files = parse_multipart(body, parse_options_header(content_type)[1]["boundary"].encode())
    assert not fields and files["image"].filename == "photo.jpg" and files["image"].read() == b"\x00\x01binary\r\n\r\n"


@pytest.mark.parametrize("body", [
    b"no boundary at all",
    b"--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nvalue without a closing boundary",
    b"--b\r\n\r\nheaders missing\r\n--b--\r\n",
    b"--b\r\nContent-Type: text/plain\r\n\r\nno disposition\r\n--b--\r\n",
    b"--b\r\nContent-Disposition: form-data; name=\"a\"",
    b"junk--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n--b--\r\n",
], ids=["no-boundary", "unclosed", "no-headers", "no-disposition", "headers-unended", "boundary-not-on-a-line"])
def test_malformed_multipart_is_a_value_error(body: bytes) -> None:
    with pytest.raises(ValueError):
        parse_multipart(body, b"b")


def test_multipart_limits_are_werkzeugs() -> None:
    many = b"".join(b"--b\r\nContent-Disposition: form-data; name=\"f%d\"\r\n\r\nv\r\n" % i for i in range(5)) + \
        b"--b--\r\n"
    assert len(parse_multipart(many, b"b", max_parts=5)[0]) == 5
    with pytest.raises(RequestEntityTooLarge):
        parse_multipart(many, b"b", max_parts=4)
    with pytest.raises(RequestEntityTooLarge):
        parse_multipart(many, b"b", max_field_bytes=4)


def _saved_head(tmp_path, layers) -> object:
    """A head SavedModel as pipeline.training.export writes one (a `head` tf.function), loaded back."""
    tf, keras = tfenv.tensorflow(), tfenv.keras()
    from pipeline.training.head import l2_normalize

    inputs = keras.Input((12,))
    x = keras.layers.Lambda(l2_normalize)(inputs)
    for layer in layers:
        x = layer(x)
    model = keras.Model(inputs, keras.layers.Lambda(l2_normalize)(x))
    module = tf.Module()
    module.model = model
    module.head = tf.function(lambda f: model(f, training=False), input_signature=[tf.TensorSpec([None, 12])])
    tf.saved_model.save(module, str(tmp_path / "head"))
    return tf.saved_model.load(str(tmp_path / "head"))  # the caller keeps it: it owns the variables


@pytest.mark.parametrize("kind", ["dense", "raw", "two-layers"])
def test_numpy_head_equals_the_saved_head_or_leaves_it_to_tensorflow(tmp_path, kind: str) -> None:
    keras = tfenv.keras()
    layers = {"dense": [keras.layers.Dense(6)], "raw": [],
              "two-layers": [keras.layers.Dense(8, activation="relu"), keras.layers.Dense(6)]}[kind]
    saved = _saved_head(tmp_path, layers)
    concrete = saved.head.concrete_functions[0]
    head = numpy_head(concrete, lambda x: concrete(tfenv.tensorflow().constant(x)))
    features = np.random.default_rng(1).normal(size=(5, 12)).astype(np.float32)
    assert np.allclose(np.asarray(head(features)), concrete(tfenv.tensorflow().constant(features)).numpy(),
                       atol=1e-5)
    assert isinstance(head(features), np.ndarray) == (kind != "two-layers")  # a numpy result: no TF call


@pytest.mark.parametrize("product_id", ["10000", "a b/c", "x?y#z", "50%", "ünï", "semi;colon&plus+"])
def test_image_links_are_what_url_for_makes(product_id: str) -> None:
    app = Flask(__name__)
    app.config["IMAGE_BASE_URL"] = ""
    app.add_url_rule("/images/<path:product_id>", "web.product_image", lambda product_id: "")
    item = {"product_id": product_id, "images": [{"thumbnail": "t0"}, {"thumbnail": "t1"}]}
    with app.test_request_context("/", base_url="http://shop.example/search-app/"):
        assert image_urls(item) == [url_for("web.product_image", product_id=product_id),
                                    url_for("web.product_image", product_id=product_id, n=1)]
    app.config["IMAGE_BASE_URL"] = "https://cdn.example/shop/"
    with app.test_request_context("/"):
        assert image_urls(item) == ["https://cdn.example/shop/t0", "https://cdn.example/shop/t1"]
    assert "/" in IMAGE_PATH_SAFE


def test_one_image_per_product_ranks_as_the_general_path_does() -> None:
    rng = np.random.default_rng(4)
    vectors = rng.normal(size=(500, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors[7] = vectors[3]  # a tie: the lower position first, as the general path orders it
    search = ProductSearch(vectors, np.ones(500, np.int32), rng.permutation(500).astype(np.int32), exact=True)
    assert search.one_image_each
    for query in (vectors[3], rng.normal(size=16).astype(np.float32)):
        hits = search.search(query, 10)
        scores = vectors @ query
        products, values, best = aggregate(np.arange(500), scores, search.image_product, "mix")
        assert [h.product for h in hits] == products[:10].tolist()
        assert [h.image for h in hits] == best[:10].tolist()
        assert np.allclose([h.score for h in hits], values[:10])
    assert top_k(np.array([0.1, 0.5, 0.5, 0.9], np.float32), 3).tolist() == [3, 1, 2]
    assert top_k(np.array([0.2], np.float32), 5).tolist() == [0]


def test_one_top_k_for_a_row_and_for_a_block_of_queries() -> None:
    """The service's `top_k` and the index stage's `exact_top_k` rank alike: highest first, ties by tiebreak, then
    by position, whatever the partition picked."""
    rng = np.random.default_rng(4)
    scores = np.round(rng.normal(size=(4, 300)), 1)  # many ties
    tiebreak = rng.integers(0, 3, size=(4, 300))
    for row in range(4):
        k = int((scores[row] > 1.0).sum())  # a cut between two different scores: which ties make it is not in doubt
        order = np.lexsort((np.arange(300), tiebreak[row], -scores[row]))[:k]
        assert top_k(scores[row], k, tiebreak[row]).tolist() == order.tolist()
        assert top_k(scores, k, tiebreak)[row, :k].tolist() == order.tolist()
        assert top_k(scores, k)[row].tolist() == np.lexsort((np.arange(300), -scores[row]))[:k].tolist()
        assert len(set(scores[row, order])) < k  # ties there are
    vectors = rng.normal(size=(200, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    found = exact_top_k(vectors, vectors[:5], 4, exclude=np.array([0, -1, 2, -1, 4]))
    sims = vectors[:5] @ vectors.T
    sims[[0, 2, 4], [0, 2, 4]] = -np.inf
    assert found.tolist() == np.argsort(-sims, axis=1, kind="stable")[:, :4].tolist()
    assert found[1, 0] == 1 and found[3, 0] == 3  # not excluded: itself first


@pytest.mark.parametrize("scoring", ["max", "mean", "mix"])
def test_an_unfiltered_scan_ranks_as_the_filtered_path_does(scoring: str) -> None:
    rng = np.random.default_rng(9)
    counts = rng.integers(1, 4, 300).astype(np.int32)  # several images per product
    vectors = rng.normal(size=(int(counts.sum()), 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    search = ProductSearch(vectors, counts, rng.permutation(len(vectors)).astype(np.int32), exact=True,
                           scoring=scoring)
    everything = np.ones(300, bool)  # a mask allowing all takes the general path; no mask takes the scan
    for query in (vectors[5], rng.normal(size=16).astype(np.float32)):
        assert search.search(query, 12) == search.search(query, 12, mask=everything)
    one_each = ProductSearch(vectors, np.ones(len(vectors), np.int32), np.arange(len(vectors), dtype=np.int32),
                             exact=True)
    for k in (1, 12, len(vectors), len(vectors) + 5):
        hits = one_each.search(vectors[7], k)
        assert hits == one_each.search(vectors[7], k, mask=np.ones(len(vectors), bool))
        assert len(hits) == min(k, len(vectors)) and hits[0].product == 7
