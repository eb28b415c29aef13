"""`sightline explain`: explain every image of a dataset into HDF5 shards.

The engine is imported when the command runs, not when the parser is built: `sightline
--help` answers without loading TensorFlow.
"""

from sightline.cli.checks import check_model_path, check_out_path, check_source_path
from sightline.config import add_method_arguments, make_config
from sightline.data.labels import parse_class_names
from sightline.jobs.lock import check_not_locked
from sightline.jobs.runner import run_job
from sightline.jobs.workers import resolve_worker
from sightline.kernels.methods import METHODS, OPTIONS
from sightline.errors import UsageError

# The options of `sightline explain`, one a line: name, type, help. Each is a flag
# (--batch-size for batch_size) and a key a TOML file (--config) may give; flags win. The
# method options (num_copies, baseline, ...) come from the table of methods.
_FLAG_TABLE = f"""
model               str   a .keras or .h5 file, or a SavedModel directory
data                str   a folder of images (class subfolders give labels), TFRecord files, a .npy array or file.h5:/dataset
out                 str   the output folder
labels              str   labels for array sources: a .npy file or file.h5:/labels
class_names         str   the model's classes: names in class order (a,b,c), or a .json/.toml file of names or of class folder -> class index; without it class folders are groups, not labels
methods             str   comma-separated: {', '.join(METHODS)} (default gradcam)
layer               str   target layer name (default: the last 4-D layer)
target              str   predicted (default), label, or a class index
batch_size          int   global batch size (default 64)
shard_size          int   samples per shard (default 1024)
image_size          str   H,W to resize to (default: the model's input)
resize              str   how images of another aspect ratio reach that size: stretch (default: non-square images are stretched), pad (letterbox on black, aspect kept) or crop (centre crop to the aspect, then resize)
preprocess          str   none (default), [0,1], [-1,1], caffe or torch
precision           str   float32 (default), mixed_bfloat16, mixed_float16 or auto (mixed_bfloat16 where faster and its maps agree)
devices             str   N or all (default all)
xla                 str   auto (default: XLA on GPUs), on or off
map_size            str   native (default: CAM maps at layer resolution) or input
compression         str   auto (default: gzip on GPUs, none on CPUs), gzip, lzf or none
worker              int   this worker's index (or from Slurm, Kubernetes, TF_CONFIG)
workers             int   number of workers in the job
tfrecord_image_key  str   TFRecord image feature (image/encoded)
tfrecord_label_key  str   TFRecord label feature (image/class/label)
overwrite           bool  replace another run's output in --out
log_json            bool  progress as JSON lines on stderr
quiet               bool  errors only
unsafe              bool  allow Lambda layers holding Python code (trusted files only)
"""
_TYPES = {"str": str, "int": int, "bool": bool}
FLAGS = tuple((name, _TYPES[kind], text) for name, kind, text in
              (line.split(None, 2) for line in _FLAG_TABLE.strip().splitlines()))

EXPLAIN_OPTIONS = {
    **{name: kind for name, kind, _ in FLAGS},
    **{name: option.kind for name, option in OPTIONS.items()},
}


def add_arguments(explain):
    explain.add_argument("--config", help="a TOML file with any of these options; flags win")
    for name, kind, text in FLAGS:
        flag = "--" + name.replace("_", "-")
        if kind is bool:
            explain.add_argument(flag, action="store_true", default=None, help=text)
        else:
            explain.add_argument(flag, type=None if kind is str else kind, help=text)
    add_method_arguments(explain)


def explain_options(args):
    """Options from --config (TOML) overlaid with the flags given, validated by type."""
    options = {}
    if args.config:
        import tomllib
        try:
            with open(args.config, "rb") as handle:
                table = tomllib.load(handle)
        except OSError as error:
            raise UsageError(f"config file {args.config!r} is unreadable ({error.strerror})") from None
        except tomllib.TOMLDecodeError as error:
            raise UsageError(f"config file {args.config!r} is not valid TOML ({error})") from None
        table = {key.replace("-", "_"): value for key, value in table.items()}
        unknown = sorted(set(table) - set(EXPLAIN_OPTIONS))
        if unknown:
            raise UsageError(f"config file {args.config!r} has unknown option(s) "
                             f"{', '.join(unknown)}")
        for key, value in table.items():
            if key == "class_names" and isinstance(value, (list, dict)):
                options[key] = value  # names in class order, or a table folder -> index
                continue
            if isinstance(value, list) and key in ("methods", "image_size"):
                value = ",".join(str(v) for v in value)
            if EXPLAIN_OPTIONS[key] is str and not isinstance(value, str):
                value = str(value)
            if EXPLAIN_OPTIONS[key] is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)  # TOML writes 0 for 0.0
            if not isinstance(value, EXPLAIN_OPTIONS[key]) or (EXPLAIN_OPTIONS[key] is int
                                                               and isinstance(value, bool)):
                raise UsageError(f"config option {key} must be {EXPLAIN_OPTIONS[key].__name__}; "
                                 f"got {value!r}")
            options[key] = value
    for key in EXPLAIN_OPTIONS:
        value = getattr(args, key, None)
        if value is not None:
            options[key] = value
    return options


def config_from_options(options):
    options = dict(options)
    if options.get("class_names") is not None:
        options["class_names"] = parse_class_names(options["class_names"])
    methods = tuple(m.strip() for m in options.pop("methods", "gradcam").split(",") if m.strip())
    if "target" in options:
        target = options["target"]
        options["target"] = int(target) if str(target).isdigit() else target
    if "image_size" in options:
        try:
            options["image_size"] = tuple(int(v) for v in str(options["image_size"]).split(","))
        except ValueError:
            raise UsageError(f"--image-size must be H,W; got {options['image_size']!r}") from None
    if "xla" in options:
        xla = {"auto": "auto", "on": True, "off": False}.get(options["xla"])
        if xla is None:
            raise UsageError(f"--xla must be auto, on or off; got {options['xla']!r}")
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
    summary = run_job(config)
    return summary.exit_code
