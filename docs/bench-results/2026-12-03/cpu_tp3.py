import time, torch, sys
from transformers import AutoModelForCausalLM
from peft import LoraConfig, get_peft_model
path="/root/.cache/guardrsft/models/smollm2-135m-instruct"
for top in (30, 12):
    m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    m = get_peft_model(m, LoraConfig(r=16, lora_alpha=16, target_modules=["q_proj","k_proj","v_proj","o_proj","gate_proj","up_proj","down_proj"], layers_to_transform=list(range(30-top,30))))
    opt=torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
    B,T=4,174; x=torch.randint(0,49000,(B,T)); lab=x.clone(); lab[:, :80]=-100
    for i in range(3):
        t=time.time(); out=m(input_ids=x, labels=lab); out.loss.backward(); opt.step(); opt.zero_grad()
        print("top", top, f"{B*T/(time.time()-t):.0f} tok/s", flush=True)
