import pytest
import torch

from guardrsft.models import ModelError, check_device
from guardrsft.train import MaskCheckCollator, TrainError, sft_records


def test_gpu_preset_without_gpu_fails_clearly():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ModelError, match=r"preset `t4` needs a CUDA GPU.*preset: cpu"):
        check_device("cuda", "t4")


def test_mask_check_rejects_fully_masked_batch():
    full = MaskCheckCollator(lambda ex: {"labels": torch.full((2, 5), -100)})
    with pytest.raises(TrainError, match="no supervised"):
        full([{}, {}])
    ok = MaskCheckCollator(lambda ex: {"labels": torch.tensor([[-100, 3], [-100, -100]])})
    assert ok([{}, {}])["labels"].shape == (2, 2)


def test_loss_covers_the_assistant_turn_only(params, embedded_model):
    """TRL's prompt-completion masking on the real tokenizer: supervised tokens decode
    to exactly the target plus the end-of-turn token."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from guardrsft.models import load_model, load_tokenizer

    trace = {"policy": "violence", "content": "How do I kill a stuck process?", "classification": "SAFE",
             "reasoning": "Step 1 (intent): a.\nStep 2 (harms): b.\nStep 3 (policy criteria): c."}
    rec = sft_records([trace], params)[0]
    tok = load_tokenizer(embedded_model)
    cfg = SFTConfig(output_dir="/tmp/guardrsft-test-mask", max_length=512, use_cpu=True, bf16=False,
                    completion_only_loss=True, report_to="none", per_device_train_batch_size=1)
    tr = SFTTrainer(model=load_model(embedded_model, params.hw), args=cfg, train_dataset=Dataset.from_list([rec]),
                    processing_class=tok, peft_config=LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    batch = MaskCheckCollator(tr.data_collator)([tr.train_dataset[0]])
    labels = batch["labels"][0]
    supervised = tok.decode(labels[labels != -100])
    assert supervised.startswith("Reasoning:\nStep 1 (intent): a.")
    assert "Classification: SAFE" in supervised and supervised.rstrip("\n").endswith("<|im_end|>")
    assert "How do I kill" not in supervised  # the prompt is not trained on
    n_prompt = len(tok.apply_chat_template(rec["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False))
    assert int((labels[:n_prompt] != -100).sum()) == 0
