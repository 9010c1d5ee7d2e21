"""LC-Net (Xia et al., 2020): importing this package registers its models and its method."""

from reference_impls.lcnet import method, model  # noqa: F401
