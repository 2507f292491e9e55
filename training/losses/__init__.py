"""The losses of each paper: JointsMSE, HPRNet focal and L1, ER-Pose smooth OKS, regression MSE."""
