"""`sightline explain`: explain every image of a dataset into HDF5 shards.

The engine is imported when the command runs, not when the parser is built: `sightline
--help` answers without loading TensorFlow.
"""

from sightline.cli.checks import check_model_path, check_out_path, check_source_path
from sightline.config import add_method_arguments
from sightline.jobs.lock import check_not_locked
from sightline.jobs.workers import resolve_worker
from sightline.kernels.methods import METHODS, OPTIONS

# Options of `sightline explain` that a TOML file (--config) may also give; flags win.
# The method options (num_copies, baseline, ...) come from the table of methods.
EXPLAIN_OPTIONS = {
    "model": str, "data": str, "out": str, "labels": str, "methods": str, "layer": str,
    "target": str, "batch_size": int, "shard_size": int, "image_size": str,
    "preprocess": str, "precision": str, "devices": str, "xla": str, "map_size": str,
    "compression": str, "worker": int, "workers": int, "overwrite": bool, "log_json": bool,
    "quiet": bool, "unsafe": bool, "tfrecord_image_key": str, "tfrecord_label_key": str,
    **{name: option.kind for name, option in OPTIONS.items()},
}


def add_arguments(explain):
    explain.add_argument("--config", help="a TOML file with any of these options; flags win")
    explain.add_argument("--model", help="a .keras or .h5 file, or a SavedModel directory")
    explain.add_argument("--data", help="a folder of images (class subfolders give labels), "
                                        "TFRecord files, a .npy array or file.h5:/dataset")
    explain.add_argument("--out", help="the output folder")
    explain.add_argument("--labels", help="labels for array sources: a .npy file or file.h5:/labels")
    explain.add_argument("--methods", help=f"comma-separated: {', '.join(METHODS)} "
                                           "(default gradcam)")
    explain.add_argument("--layer", help="target layer name (default: the last 4-D layer)")
    explain.add_argument("--target", help="predicted (default), label, or a class index")
    explain.add_argument("--batch-size", type=int, help="global batch size (default 64)")
    explain.add_argument("--shard-size", type=int, help="samples per shard (default 1024)")
    explain.add_argument("--image-size", help="H,W to resize to (default: the model's input)")
    explain.add_argument("--preprocess", help="none (default), [0,1], [-1,1], caffe or torch")
    explain.add_argument("--precision", help="float32 (default), mixed_bfloat16, mixed_float16 "
                         "or auto (mixed_bfloat16 where faster and its maps agree)")
    explain.add_argument("--devices", help="N or all (default all)")
    explain.add_argument("--xla", help="auto (default: XLA on GPUs), on or off")
    explain.add_argument("--map-size", help="native (default: CAM maps at layer resolution) or input")
    explain.add_argument("--compression", help="gzip (default), lzf or none")
    explain.add_argument("--worker", type=int, help="this worker's index (or from Slurm, "
                                                    "Kubernetes, TF_CONFIG)")
    explain.add_argument("--workers", type=int, help="number of workers in the job")
    add_method_arguments(explain)
    explain.add_argument("--tfrecord-image-key", help="TFRecord image feature (image/encoded)")
    explain.add_argument("--tfrecord-label-key", help="TFRecord label feature "
                                                      "(image/class/label)")
    explain.add_argument("--overwrite", action="store_true", default=None,
                         help="replace another run's output in --out")
    explain.add_argument("--log-json", action="store_true", default=None,
                         help="progress as JSON lines on stderr")
    explain.add_argument("--quiet", action="store_true", default=None, help="errors only")
    explain.add_argument("--unsafe", action="store_true", default=None,
                         help="allow Lambda layers holding Python code (trusted files only)")


def explain_options(args):
    """Options from --config (TOML) overlaid with the flags given, validated by type."""
    options = {}
    if args.config:
        import tomllib
        try:
            with open(args.config, "rb") as handle:
                table = tomllib.load(handle)
        except OSError as error:
            raise ValueError(f"config file {args.config!r} is unreadable ({error.strerror})") from None
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"config file {args.config!r} is not valid TOML ({error})") from None
        table = {key.replace("-", "_"): value for key, value in table.items()}
        unknown = sorted(set(table) - set(EXPLAIN_OPTIONS))
        if unknown:
            raise ValueError(f"config file {args.config!r} has unknown option(s) "
                             f"{', '.join(unknown)}")
        for key, value in table.items():
            if isinstance(value, list) and key in ("methods", "image_size"):
                value = ",".join(str(v) for v in value)
            if EXPLAIN_OPTIONS[key] is str and not isinstance(value, str):
                value = str(value)
            if EXPLAIN_OPTIONS[key] is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)  # TOML writes 0 for 0.0
            if not isinstance(value, EXPLAIN_OPTIONS[key]) or (EXPLAIN_OPTIONS[key] is int
                                                               and isinstance(value, bool)):
                raise ValueError(f"config option {key} must be {EXPLAIN_OPTIONS[key].__name__}; "
                                 f"got {value!r}")
            options[key] = value
    for key in EXPLAIN_OPTIONS:
        value = getattr(args, key, None)
        if value is not None:
            options[key] = value
    return options


def config_from_options(options):
    from sightline.config import make_config
    options = dict(options)
    methods = tuple(m.strip() for m in options.pop("methods", "gradcam").split(",") if m.strip())
    if "target" in options:
        target = options["target"]
        options["target"] = int(target) if str(target).isdigit() else target
    if "image_size" in options:
        try:
            options["image_size"] = tuple(int(v) for v in str(options["image_size"]).split(","))
        except ValueError:
            raise ValueError(f"--image-size must be H,W; got {options['image_size']!r}") from None
    if "xla" in options:
        xla = {"auto": "auto", "on": True, "off": False}.get(options["xla"])
        if xla is None:
            raise ValueError(f"--xla must be auto, on or off; got {options['xla']!r}")
        options["xla"] = xla
    return make_config(methods, **options)


def check(args):
    """Options and paths, before TensorFlow (which the runner imports) loads."""
    config = config_from_options(explain_options(args))
    check_model_path(config.model)
    check_source_path(config.data, "--data")
    if config.labels is not None:
        check_source_path(config.labels, "--labels")
    check_out_path(config.out)
    worker, _ = resolve_worker(config.worker, config.workers)
    check_not_locked(config.out, worker)
    args.checked_config = config


def run(args):
    config = getattr(args, "checked_config", None) or config_from_options(explain_options(args))
    from sightline.jobs.runner import run_job
    summary = run_job(config)
    return summary.exit_code
