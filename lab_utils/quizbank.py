"""Every notebook's quiz: asked before the notebook and again after it, so a learner sees their own gain.

Rules the tests hold the bank to: no question appears twice, no answer is given away by its question, the right
answers are spread over the positions, and each notebook has four to six questions on what it teaches.
"""

from __future__ import annotations

from lab_utils.quiz import Question

NOTEBOOK_TITLES = {
    "00": "Setup: your machine, your profile, your memory budget",
    "01": "The Alpaca data and the training view",
    "02": "Supervised fine-tuning with LoRA",
    "03": "Memory optimizations",
    "04": "Serving with vLLM",
    "05": "Before and after",
    "06": "Export and serve anywhere: GGUF and llama.cpp",
}

BANK: dict[str, tuple[Question, ...]] = {
    "00": (
        Question(
            "The base model keeps writing after it has answered the capital of France. Why?",
            (
                "Its maximum length is set too low",
                "It was pretrained to continue text and never learned to emit the end-of-text token after an answer",
                "The tokenizer has no end-of-text token",
                "Greedy decoding cannot stop",
            ),
            1,
            "Pretraining teaches continuation; stopping after an answer is a habit SFT teaches (the EOS token is in the "
            "labels of every training example).",
        ),
        Question(
            "Full fine-tuning with AdamW in mixed precision keeps about how many bytes per parameter, before "
            "activations?",
            ("2", "4", "8", "16"),
            3,
            "However they are split (fp32: 4 weights + 4 gradients + 8 Adam moments; ZeRO's mixed precision: "
            "2 + 2 + 4 master + 8), the total is 16 bytes: about 128 GB for an 8B model.",
        ),
        Question(
            "You double the sequence length of a LoRA run. Which part of training memory grows?",
            ("The frozen weights", "The activations", "The optimizer state", "The LoRA gradients"),
            1,
            "Weights, gradients and optimizer state depend on the parameters only; activations grow with the tokens "
            "per step (and the attention scores with its square, unless a fused kernel is used).",
        ),
        Question(
            "Why can a 70B model be fine-tuned on a 128 GB machine only with QLoRA?",
            (
                "QLoRA trains fewer layers",
                "QLoRA stores the frozen base in 4-bit NF4 (~35-40 GB) while bf16 LoRA needs ~140 GB for it",
                "QLoRA does not need gradients",
                "QLoRA offloads the model to disk",
            ),
            1,
            "The frozen weights dominate: 0.5 bytes per weight in NF4 against 2 in bf16.",
        ),
        Question(
            "A T4 GPU has compute capability 7.5. What FP8 serving can vLLM offer on it?",
            (
                "Full FP8 (weights and activations, W8A8)",
                "None at all",
                "Weight-only FP8 through the Marlin kernel, computing in fp16",
                "FP4 (NVFP4)",
            ),
            2,
            "FP8 tensor cores start at compute capability 8.9 (Ada, Hopper); from 7.5 vLLM stores weights in FP8 and "
            "dequantizes them to fp16 in its Marlin kernel.",
        ),
    ),
    "01": (
        Question(
            "Why are the prompt's tokens labelled -100 in a training example?",
            (
                "To mark them as padding",
                "So the loss ignores them: the model learns to write responses, not to repeat prompts",
                "Because -100 is the BOS token",
                "To make them attend only to earlier tokens",
            ),
            1,
            "-100 is the ignore index of PyTorch's cross-entropy: those positions add nothing to the loss.",
        ),
        Question(
            "The pad token is masked out of the labels, the EOS token is not. What happens if pad and EOS are the same "
            "token and every pad position is masked?",
            (
                "Nothing: they are only used at the end",
                "Training crashes",
                "The EOS positions can get masked too, so the model may never learn to stop",
                "The model learns to emit padding",
            ),
            2,
            "That is why the lab's tokenizer has its own pad token and its collation view checks that EOS is "
            "supervised.",
        ),
        Question(
            "The Alpaca prompt in the lab ends with '### Response:' and a newline. What does the model write first?",
            ("'### Response:' again", "The answer itself", "The instruction", "An end-of-text token"),
            1,
            "The header is part of the prompt, so the completion (what the loss sees) starts with the answer; the seed "
            "tutorial's answer began with '### Response:' because its template did not end with the header.",
        ),
        Question(
            "In padding-free batching, how does the model keep concatenated examples apart?",
            (
                "Their position ids restart at 0 for each example, and attention kernels use them as boundaries",
                "A separator token between examples",
                "An attention mask full of zeros",
                "It does not: examples attend to each other",
            ),
            0,
            "Position ids (or cumulative sequence lengths) tell FlashAttention's varlen kernel where each example "
            "starts.",
        ),
        Question(
            "Real Alpaca has rows with an empty output. What does the lab do with such rows from the hub?",
            (
                "Trains on them as they are",
                "Stops with an error",
                "Fills them with a placeholder answer",
                "Skips them and reports how many were skipped and why",
            ),
            3,
            "Hub data skips and reports bad rows by default; the lab's own data is strict, so a mistake in it stops "
            "with the file and line.",
        ),
    ),
    "02": (
        Question(
            "LoRA learns ΔW = B·A and initializes B to zero. What is the model at step 0?",
            (
                "Random: the adapters are random",
                "Exactly the base model",
                "The base model with its weights halved",
                "Untrainable until A is zeroed too",
            ),
            1,
            "B = 0 makes ΔW = 0, so training starts from the base model's behaviour; A is random so B's gradient is "
            "not zero.",
        ),
        Question(
            "With lora_r = 16 and lora_alpha = 32, by what factor is B·A scaled before it is added to W?",
            ("0.5", "16", "2", "32"),
            2,
            "The scale is α/r = 32/16 = 2. Keeping α/r fixed when you change r keeps the update's size comparable.",
        ),
        Question(
            "LoRA trains 7.8% of the pocket model's parameters but only about 0.5% of Llama-3-8B's (r = 16, all linear "
            "layers). Why?",
            (
                "Llama-3-8B uses a smaller rank",
                "A d_out × d_in matrix gets r·(d_in + d_out) adapter parameters: the share shrinks as matrices widen",
                "The pocket model has more layers",
                "Llama-3-8B's embeddings are trained too",
            ),
            1,
            "At width 4,096 a rank-16 adapter is r·(d_in + d_out) / (d_in·d_out) ≈ 0.8% of a square matrix; at the "
            "pocket model's width it is several percent.",
        ),
        Question(
            "With length-grouped batches the training loss jumps from step to step while the eval loss falls "
            "smoothly. What should you read?",
            (
                "The training loss: it is the real one",
                "Neither: only accuracy matters",
                "The eval loss on held-out data: each training batch holds examples of a different length and kind",
                "The learning rate",
            ),
            2,
            "Each step's loss averages over one batch; grouping by length makes batches differ systematically.",
        ),
        Question(
            "Why does the lab merge the adapter into the base before serving?",
            (
                "One plain model folder that any engine serves, with no adapter overhead per token",
                "Merging improves accuracy",
                "vLLM cannot serve adapters at all",
                "Merging quantizes the model",
            ),
            0,
            "W' = W + (α/r)·B·A is computed once. vLLM can also serve adapters (--enable-lora), which the 70B profile "
            "does.",
        ),
    ),
    "03": (
        Question(
            "Gradient checkpointing trades...",
            (
                "memory for compute: it stores more to compute less",
                "accuracy for memory",
                "compute for memory: it recomputes activations in the backward pass instead of storing them",
                "batch size for sequence length",
            ),
            2,
            "Only each layer's input is kept; the rest is recomputed, about one extra forward pass.",
        ),
        Question(
            "Micro-batch 1 with 2 accumulation steps instead of batch 2: what stays the same, what changes?",
            (
                "Same effective batch (2 sequences per optimizer step); activation memory for 1 sequence at a time",
                "Half the effective batch, same memory",
                "Same memory, twice the learning rate",
                "Nothing changes",
            ),
            0,
            "Gradients of two micro-batches are summed before one optimizer step; only one micro-batch's activations "
            "exist at a time.",
        ),
        Question(
            "8-bit AdamW cuts the optimizer state per trainable parameter from 8 bytes to about...",
            ("4", "6", "1", "2"),
            3,
            "Two moments in 8 bits each (with block-wise scales) instead of two fp32 numbers.",
        ),
        Question(
            "What does LoRA not save, compared with full fine-tuning?",
            (
                "Gradients of the frozen weights",
                "The activations of the frozen base, needed to backpropagate into the adapters",
                "Optimizer state of the frozen weights",
                "The copy of the weights in the optimizer",
            ),
            1,
            "The backward pass runs through every layer either way; at long sequences activations dominate LoRA's "
            "memory.",
        ),
        Question(
            "DeepSpeed ZeRO-3 and FSDP with full sharding split what across GPUs?",
            (
                "Only the optimizer state",
                "Only the data",
                "The layers, one GPU each",
                "Weights, gradients and optimizer state",
            ),
            3,
            "ZeRO-1 shards optimizer state, ZeRO-2 adds gradients, ZeRO-3 adds the weights themselves.",
        ),
    ),
    "04": (
        Question(
            "What does vLLM's --gpu-memory-utilization 0.85 decide?",
            (
                "The share of the GPU vLLM takes: weights first, and the rest of that share becomes KV-cache blocks",
                "How busy the GPU's cores may get",
                "The share of memory used for the weights only",
                "The batch size",
            ),
            0,
            "vLLM pre-allocates the KV cache from what is left of its share after the weights and a profiling pass; "
            "the KV cache bounds how many tokens can be in flight.",
        ),
        Question(
            "What does PagedAttention change about the KV cache?",
            (
                "It compresses keys and values to 4 bits",
                "It stores the cache in fixed-size blocks allocated on demand, so sequences waste almost no memory",
                "It moves the cache to the CPU",
                "It recomputes keys and values instead of caching them",
            ),
            1,
            "Like virtual memory pages: no contiguous reservation for the longest possible sequence.",
        ),
        Question(
            "Why does the load test set ignore_eos?",
            (
                "To make answers better",
                "To measure the time to the first token",
                "So every request generates exactly max_tokens: equal work at every concurrency",
                "Because the base model has no EOS",
            ),
            2,
            "Otherwise a model that stops early looks fast; with ignore_eos, tokens/s compares the same work.",
        ),
        Question(
            "FP8 comes in E4M3 and E5M2. Which one holds weights and activations for inference, and why?",
            (
                "E5M2, for its range",
                "Either: they are the same format",
                "E5M2, because it has more mantissa bits",
                "E4M3, for its extra mantissa bit (precision); E5M2's range suits gradients",
            ),
            3,
            "E4M3: 4 exponent bits, 3 mantissa bits, max 448. E5M2: 5 exponent bits, 2 mantissa bits, max 57,344.",
        ),
        Question(
            "With continuous batching, when does a new request start being served?",
            (
                "When the current batch has finished",
                "At the next decoding step: it joins the running batch",
                "After a fixed timeout",
                "Only when max-num-seqs requests are waiting",
            ),
            1,
            "The scheduler adds and removes sequences at every step, so short answers free their slot at once.",
        ),
    ),
    "05": (
        Question(
            "ROUGE-L and BLEU score an answer by...",
            (
                "asking a judge model",
                "checking the facts against a knowledge base",
                "the overlap of its words with a reference answer (longest common subsequence; n-gram precision)",
                "its length",
            ),
            2,
            "Surface overlap: a correct answer in other words scores low, a fluent wrong one can score high.",
        ),
        Question(
            "After SFT the pocket model answers questions about facts that were in its pretraining text but in none "
            "of the SFT examples. What did SFT teach?",
            (
                "The facts themselves",
                "Nothing measurable",
                "To answer in the expected form and stop, using facts the base already knew",
                "A new vocabulary",
            ),
            2,
            "SFT mostly teaches behaviour and format; knowledge comes from pretraining (or retrieval).",
        ),
        Question(
            "Your documents change every week and users ask about them. What fits best?",
            (
                "Retrieval (RAG): put the current documents in the prompt",
                "Fine-tune every week",
                "A bigger base model",
                "A higher temperature",
            ),
            0,
            "Fine-tuning shapes behaviour, style and format; retrieval brings facts that change.",
        ),
        Question(
            "Why can a 3.7M-parameter model tell the same before/after story as Llama-3-8B?",
            (
                "It is a compressed Llama-3-8B",
                "The story is about behaviour (answer, then stop), which SFT teaches at any size",
                "It was trained on the test questions only",
                "It cannot: the numbers are simulated",
            ),
            1,
            "The base continues text at any size; SFT on instruction data teaches the format and the EOS at any size.",
        ),
        Question(
            "An instruct model (e.g. Llama-3-8B-Instruct) already answers and stops. Why does the lab start from a "
            "base model?",
            (
                "Instruct models cannot be fine-tuned",
                "Base models are more accurate",
                "Licenses forbid it",
                "To see what SFT changes: from a base model, the before/after difference is SFT's doing",
            ),
            3,
            "Starting from a model that already follows instructions would hide the effect; in practice you often "
            "start from the instruct model.",
        ),
    ),
    "06": (
        Question(
            "What does a GGUF file hold besides the weights?",
            (
                "Nothing: the tokenizer and template come from the hub",
                "The training data",
                "The tokenizer, the special tokens and the chat template, as metadata",
                "The optimizer state",
            ),
            2,
            "One file is the whole model for llama.cpp, Ollama and LM Studio: metadata first, then every tensor.",
        ),
        Question(
            "A GGUF export works, but the served model rambles and never stops. The most likely cause?",
            (
                "The chat template in the file renders a different prompt from the training one",
                "The file is too small",
                "llama.cpp cannot stop generating",
                "The quantization removed the EOS token",
            ),
            0,
            "Prompts the model was never trained on get answers it was never trained to end: check the embedded "
            "template against the training prompt, as notebook 06 does.",
        ),
        Question(
            "q8_0 stores each block of 32 weights as...",
            (
                "32 floats in 8 bits of exponent",
                "8-bit integers with one f16 scale per block",
                "the 8 largest weights only",
                "4-bit integers with two scales",
            ),
            1,
            "About 8.5 bits per weight: half of f16's size, with a small rounding error.",
        ),
        Question(
            "Eight users at once on llama-cpp-python's server on a CPU: what happens to tokens/s compared with one user?",
            (
                "It grows about eight times",
                "It drops to zero",
                "Requests fail",
                "About the same: requests queue one after another",
            ),
            3,
            "Its server runs one request at a time; vLLM batches concurrent requests, which is what it is built for.",
        ),
        Question(
            "Why does the lab's GGUF exporter refuse a tokenizer whose form it does not know, instead of guessing?",
            (
                "A wrong pre-tokenizer splits text differently from training: every prompt becomes other tokens",
                "Guessing is slow",
                "GGUF has room for one tokenizer only",
                "llama.cpp would crash",
            ),
            0,
            "The file would load and run, and quietly answer worse: a clear error is better than a silent mismatch.",
        ),
    ),
}
