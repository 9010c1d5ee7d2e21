"""Static baselines. Importing this package registers every model in it."""

from baselines.static import small_cnn  # noqa: F401
