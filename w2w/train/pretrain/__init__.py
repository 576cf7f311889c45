"""Self-supervised pretraining of a segmentation model's encoder on a scene's own imagery.

``w2w pretrain SCENE`` trains the encoder that ``w2w train`` builds with dense VICReg
(:mod:`.vicreg`) on two views of every chip of the scene (:mod:`.views`),
no labels needed, as a Ray Train DDP job (:mod:`.run`), and writes an encoder file
(:mod:`w2w.model.encoder_file`) that ``train --encoder-weights`` takes.
"""
