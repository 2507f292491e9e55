"""Datasets in COCO format (COCO keypoints, COCO-WholeBody, CrowdPose, MPII) and synthetic people."""
