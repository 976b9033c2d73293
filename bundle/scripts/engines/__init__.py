"""Ignite trainers: the semi-supervised GAN (``gan``) and the mean-teacher baseline (``mean_teacher``)."""
