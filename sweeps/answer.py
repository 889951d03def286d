"""The ladder's answer in words, as the summary, the sweep's front page and the report give
it: the ensemble and the best single model, each with its validation figures and its one test
figure, and how far each is ahead of the best baseline at the same budget, on the same
validation images."""

from __future__ import annotations

import search_space
from harness import records

# A paired difference with McNemar's p under this is called a real lead.
SIGNIFICANCE = 0.05


def describe_lead(champion: records.Champion) -> str:
    """The top rung winner's lead over the runner-up on the paired validation images, and
    whether that lead is more than the split's noise."""
    lead = (f"ahead of {champion.runner_up} on {champion.only_leader} validation images, behind on "
            f"{champion.only_runner_up} (McNemar p = {champion.p_value:.2g})")
    if champion.p_value < SIGNIFICANCE:
        return f"{lead}: a real lead"
    return f"{lead}: within the validation split's noise, so the ensemble, which averages them, is the steadier answer"


def baseline_itself(labels: list[str]) -> str | None:
    """The baseline a model is (a member list of one baseline, or one trained with another
    seed), which it cannot be compared with; None for any other model."""
    if len(labels) == 1 and labels[0].split(" seed ")[0] in search_space.BASELINES:
        return labels[0]
    return None


def describe_versus_baseline(lead: records.PairedLead | None, validation_accuracy: float,
                             itself: str | None = None) -> str:
    """How far a model is ahead of the top rung's best baseline, paired on the same images;
    ``itself``: the baseline the model is, when it is one."""
    if lead is None and itself is not None:
        return f"it is the baseline {itself}, so it has no baseline to beat at this budget"
    if lead is None:
        return "no baseline finished at the top rung to compare with"
    points = (validation_accuracy - lead.against_accuracy) * 100
    verdict = "a real difference" if lead.p_value < SIGNIFICANCE else "within the validation split's noise"
    return (f"{points:+.2f} points against {lead.against} ({lead.against_accuracy:.4f}) at the same budget: right on "
            f"{lead.only_this} validation images it gets wrong, wrong on {lead.only_against} it gets right "
            f"(McNemar p = {lead.p_value:.2g}, {verdict})")


def describe_members(ensemble: records.Ensemble) -> str:
    """The ensemble's members with their weights (older ladders averaged the best k equally)."""
    if not ensemble.weights:
        return ", ".join(ensemble.members)
    return ", ".join(f"{member} x{weight:.2f}" for member, weight in zip(ensemble.members, ensemble.weights))


def answer_lines(result: records.LadderResult) -> list[str]:
    """The answer, a line each for the ensemble and the best single model."""
    averaged, champion = result.ensemble, result.champion

    def versus(lead: records.PairedLead | None, validation_accuracy: float, labels: list[str]) -> str:
        return describe_versus_baseline(lead, validation_accuracy, baseline_itself(labels))
    loss = f", log-loss {averaged.validation_log_loss:.4f}" if averaged.validation_log_loss is not None else ""
    if averaged.rule_scores:
        how = f"{averaged.rule} on validation log-loss, the rule whose ensembles held up best on held-out halves"
    else:
        how = "chosen on validation log-loss" if averaged.weights else "k chosen on validation accuracy"
    if averaged.views > 1:
        how += f", each averaged over the digit and its {averaged.views - 1} one-pixel shifts"
    if result.other_top_rungs:
        how += f"; candidates from this sweep's top rung and the store's {', '.join(result.other_top_rungs)}"
    lines = [f"Ensemble of {len(averaged.members)} ({describe_members(averaged)}; {how}): validation "
             f"{averaged.validation_accuracy:.4f}{loss}, test {averaged.test_accuracy:.4f} (read once): {averaged.model}",
             f"  {versus(averaged.versus_baseline, averaged.validation_accuracy, averaged.members)}",
             f"Best single model: {champion.label}, validation {champion.validation_accuracy:.4f}, "
             f"test {champion.test_accuracy:.4f} (read once): {champion.model}",
             f"  {versus(champion.versus_baseline, champion.validation_accuracy, [champion.label])}"]
    if champion.runner_up:
        lines.append(f"  {describe_lead(champion)}")
    if result.small is not None:
        small = result.small
        same = " (the best single model itself)" if small.run_id == champion.run_id else ""
        lines.append(f"Most accurate within {small.params_at_most:,} parameters: {small.label}{same}, "
                     f"{small.param_count:,} parameters, validation {small.validation_accuracy:.4f}, "
                     f"test {small.test_accuracy:.4f} (read once): {small.model}")
    elif result.small_params_at_most:
        lines.append(f"No top-rung model has at most {result.small_params_at_most:,} parameters: nothing registered "
                     "as @small (raise --small-params, or explore smaller networks)")
    return lines


def rule_table(rule_scores: list[records.RuleScore], rule: str, views: int) -> list[str]:
    """The selection rules the ensemble step tried, over the digit alone and over its views:
    held out on halves of validation (the figures it chose on), and applied to all of it; the
    chosen ``rule`` over ``views`` marked (Markdown; empty for a ladder recorded before rules
    were weighed)."""
    if not rule_scores:
        return []
    lines = ["How the members were chosen: each rule, over the digit alone and over its views, chosen on one "
             "random half of validation and scored on the other, many times over; the one with the lowest held-out "
             "log-loss was applied to all of validation.", "",
             "| selection rule | test-time views | held-out accuracy | held-out log-loss | members (held out) "
             "| on all of validation: accuracy | log-loss | members |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {score.rule}{' (chosen)' if (score.rule, score.views) == (rule, views) else ''} | "
              f"{score.views} | {score.held_out_accuracy:.4f} | {score.held_out_log_loss:.4f} | "
              f"{score.held_out_members:.1f} | {score.validation_accuracy:.4f} | {score.validation_log_loss:.4f} | "
              f"{score.members} |" for score in rule_scores]
    return [*lines, ""]


def optional(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "-"


def candidate_table(result: records.LadderResult) -> list[str]:
    """The models the ensemble step weighed, the top rung's and any other sweep's (labelled with
    its study), as it weighed them (Markdown)."""
    if not result.scores:
        return []
    weights = dict(zip(result.ensemble.members, result.ensemble.weights))
    lines = ["| candidate | validation accuracy | validation log-loss | temperature | log-loss at it "
             "| over test-time views | weight in the ensemble |", "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {score.label} | {score.validation_accuracy:.4f} | {score.validation_log_loss:.4f} | "
              f"{score.temperature:.2f} | {optional(score.calibrated_log_loss)} | {optional(score.views_log_loss)} | "
              f"{weights.get(score.label, 0):.2f} |" for score in result.scores]
    return lines
