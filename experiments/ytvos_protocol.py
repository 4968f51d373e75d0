"""RefCOCO/+/g pre-training -> Ref-YouTube-VOS fine-tuning -> Ref-DAVIS17 zero-shot.

    python -m experiments.ytvos_protocol                 # on the embedded synthetic benchmark
    python -m experiments.ytvos_protocol --real model.path=/path/Wan2.1-T2V-1.3B-Diffusers \\
        pretrain:data.root=/data/refcoco finetune:data.root=/data/ref_ytvos ytvos_valid:data.root=/data/ref_ytvos \\
        davis_zeroshot:data.root=/data/ref_davis davis_official:data.root=/data/ref_davis
"""

import sys

from rvosflow.protocols import main

if __name__ == "__main__":
    sys.exit(main("ytvos"))
