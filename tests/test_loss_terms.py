"""progress_loss_terms.png: the per-epoch loss terms of a scribble trainer."""
import os


def _meta_logger(tmp_path, terms: dict):
    from nnunetv2.training.logging.nnunet_logger import MetaLogger

    from nnunet_scribble.training.loss_terms import log_term

    logger = MetaLogger(str(tmp_path), resume=False)
    for epoch in range(3):
        logger.log("train_losses", float(sum(v[epoch] for v in terms.values())), epoch)
        for name, values in terms.items():
            log_term(logger, name, values[epoch], epoch)
    return logger


def test_loss_terms_plot_shows_the_total_and_every_term(tmp_path):
    import matplotlib.pyplot as plt

    from nnunet_scribble.training.loss_terms import loss_terms_figure, plot_loss_terms

    # a single term is the total: one curve that says so, not two identical lines one hiding the other
    fig = loss_terms_figure(_meta_logger(tmp_path, {"partial": [1.0, 0.8, 0.7]}))
    lines = fig.axes[0].get_lines()
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["total (train) = partial (only term)"]
    assert len(lines) == 1
    plt.close(fig)
    # several terms: the total is drawn wide and translucent beneath, so a term equal to it stays visible
    fig = loss_terms_figure(_meta_logger(tmp_path, {"partial": [1.0, 0.8, 0.7], "cpl": [0.0, 0.0, 0.0]}))
    total, *terms = fig.axes[0].get_lines()
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["total (train)", "partial", "cpl"]
    assert total.get_linewidth() > 2 * terms[0].get_linewidth() and total.get_alpha() < 1
    assert total.get_zorder() < min(t.get_zorder() for t in terms)
    plt.close(fig)
    assert os.path.isfile(plot_loss_terms(_meta_logger(tmp_path, {"partial": [1.0, 0.8, 0.7]}), str(tmp_path)))
