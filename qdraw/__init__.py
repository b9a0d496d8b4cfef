"""Shared internals of the Quick, Draw! training toolkit; the scripts at the repository root import from here, never
the other way round. Every module, by concern:

Ingest (input files → rows → packed blocks):
    strokes      pure stroke functions: parse a drawing's JSON text and validate it
    simplify     Google's raw → simplified conversion (align, scale, resample, RDP), bit for bit where possible
    formats      which format a per-class file is in; gzip-transparent streamed reading
    readers      streamed readers of the text layouts (Kaggle CSV, Google ndjson) and layout detection
    fastparse    a numba parser for the rows' fixed grammar (readers' fast path; orjson has the final word)
    binfmt       Google's binary ``<word>.bin`` files: a compiled streamed reader and a writer
    sketchrnn    Sketch-RNN stroke-3 ``.npz`` files: a reader that never runs pickled code, and a writer
    synthetic    procedural doodles in Google's raw format: the default data, no download
    pack         rows → .qdb blocks: chunked parsing, validation, raw normalisation, the validation split
    prepare      the work behind prepare_data.py (every class in parallel, the test CSV, meta.json) and predict's
                 packing of any input into a temporary store

Store:
    store        the packed, memory-mapped store and its .qdb block format; the splitmix64 hash
    validate     everything compiled code relies on, checked when a block is opened (CRC included)
    atomic       atomic, durable writes and the clean-up of what a kill leaves

Data path (store → StrokeBatch → transform → render → loader; docs/DATA_PATH.md):
    batch        StrokeBatch, the public batch protocol (plain arrays)
    sampling     the compiled training epoch plan (one block per class and epoch)
    dataset      BalancedBlockDataset (training) and SplitDataset (validation / test)
    augment      stroke augmentation (flip, affine, stroke dropout, jitter, time scale), compiled and hashed
    encoding     the registry of colour schemes for pictures (defined in data_loader_*.py)
    raster       the batch rasteriser: packed strokes → uint8 pictures, and the batched gather
    points       packed strokes → padded float32 point sequences for the stroke models
    render       InputSpec (what a model reads, saved in checkpoints) and the render stages
    produce      a chunk of batches in one compiled call without the GIL: what a loader thread runs
    loader       threads (default) or worker processes, streaming across epoch boundaries
    mix          mixup / CutMix on rendered pictures (off by default)

Models and training:
    zoo          the model registry and factory, weight loading (the builders are in models.py)
    cbam         the CBAM attention block of cbam_resnet50
    strokenets   the models that read strokes: GRU/LSTM and Transformer sequence models, the learned rasteriser
    config       YAML under argparse (CLI > YAML > defaults), ConfigArgumentParser
    job          what train.py builds before its loop, its checkpoints and resume
    engine       train_one_epoch and evaluate
    schedule     cosine annealing with warm restarts, a pure function of time in epochs
    averaging    EMA of the weights, checkpoint averaging, BatchNorm re-estimation
    distributed  torchrun set-up, rank queries, buffer broadcast (docs/DISTRIBUTED.md)
    checkpoint   flat checkpoints written atomically, read with weights_only=True
    logs         console logging, summary.csv, TensorBoard scalars, the curves PNG
    metrics      MAP@3, top-1, top-3

Predict and second stage:
    inference    a checkpoint's model rebuilt alone; an input opened as a store; probabilities with TTA
    classifier   a model as predict.py and serve.py use it (checkpoint or ONNX), with its InputSpec
    predictions  prediction CSVs: read, write, align, blend, balance
    vote         rank-weighted voting (blend2.py --method vote)
    stacking     the LightGBM stacker of stack.py
    features     drawing features for the stacker
    pseudo       pseudo-labelled test drawings as a separate, marked source of a store

Serve and export:
    export       ONNX export (torch.export-based), self-describing metadata, checked with onnxruntime
    guess        one drawing from a web request to the model's input, through the packing code
    microbatch   a micro-batcher for asyncio servers
    serving      serve.py's Starlette app: the drawing page (web/index.html), the guess API, collection

The ingest modules stay flat rather than in a ``qdraw/ingest/`` package: they are imported by name from some thirty
places (scripts, tests, each other), ``from qdraw.readers import ...`` reads as well as ``from qdraw.ingest.readers``
would, and the map above gives the grouping a package would.
"""
