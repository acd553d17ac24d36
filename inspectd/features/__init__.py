"""Backbones: timm feature extractors with offline weight resolution."""

from inspectd.features.backbone import BackboneConfig, FeatureExtractor, create_classifier

__all__ = ["BackboneConfig", "FeatureExtractor", "create_classifier"]
