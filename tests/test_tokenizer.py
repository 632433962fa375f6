from ailo.tokenizer import decode, encode, eot_id, load_tokenizer


def test_hello_world_ids_and_round_trip():
    assert encode("Hello world") == [15496, 995]
    assert decode([15496, 995]) == "Hello world"


def test_full_gpt2_vocabulary():
    assert load_tokenizer().get_vocab_size() == 50257
    assert eot_id() == 50256


def test_byte_level_round_trip_of_arbitrary_text():
    text = "  Ünïcode — emoji 🎉,\n\ttabs and 'quotes' 1234567"
    assert decode(encode(text)) == text
    assert encode(" the") == [262]
