import pytest
import torch

from patchdet.training.models import count_parameters, get_model, list_models, register_model

# Table 2 of the DisCNN paper: 0.149 M and 0.028 M trainable parameters.
PAPER_PARAMETERS = {"discnn8": 148_568, "discnn1": 28_295}


@pytest.mark.parametrize("name, expected", sorted(PAPER_PARAMETERS.items()))
def test_discnn_parameter_counts_match_table_2(name, expected):
    assert count_parameters(get_model(name)) == expected


@pytest.mark.parametrize("name", sorted(PAPER_PARAMETERS))
def test_discnn_output_is_16d_and_nonnegative(name):
    model = get_model(name).eval()
    out = model(torch.randn(4, 3, 96, 96))
    assert out.shape == (4, 16)
    assert (out >= 0).all()


def test_pre_activation_matches_forward_after_relu():
    model = get_model("discnn8", input_size=32).eval()
    x = torch.randn(3, 3, 32, 32)
    f, z = model(x, return_pre_activation=True)
    torch.testing.assert_close(f, torch.relu(z))
    torch.testing.assert_close(f, model(x))


def test_negative_can_land_exactly_on_origin():
    model = get_model("discnn8", input_size=32).eval()
    with torch.no_grad():
        model.classifier[4].bias.fill_(-1e3)  # last FC pushed far below zero
    assert torch.count_nonzero(model(torch.randn(2, 3, 32, 32))) == 0


def test_registry_rejects_duplicates_and_unknown_names():
    assert {"discnn8", "discnn1"} <= set(list_models())
    with pytest.raises(ValueError, match="already registered"):
        register_model("discnn8")(lambda: None)
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        get_model("nope")


def test_input_size_must_be_multiple_of_16():
    with pytest.raises(ValueError, match="multiple of 16"):
        get_model("discnn8", input_size=40)
