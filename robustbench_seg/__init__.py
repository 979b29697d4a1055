"""rbseg: a robustness evaluation suite for semantic segmentation.

Reproduces "Feature Binding with Category-Dependant MixUp for Semantic Segmentation and
Adversarial Robustness" (Islam et al., BMVC 2020) on real PASCAL VOC or on the embedded
synthetic VOC-format benchmark (SynthVOC).
"""
__version__ = "0.1.0"
