//! When each virtual user starts and stops.
//!
//! The whole test is planned once, globally: user `k` (0-based) starts at a
//! time given by the stage table and spawn rates, and users are stopped
//! last-in-first-out when a stage asks for fewer. A segment `i/n` then runs
//! exactly the users with `k % n == i - 1`, like k6's execution segments,
//! so any number of segments add up to the whole test, user for user.

use std::str::FromStr;

use anyhow::bail;
use serde::{Deserialize, Serialize};

use crate::profile::Stage;

/// This process's share of the test: `index` of `count` (1-based on the
/// command line, 0-based here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Segment {
    pub(crate) index: u32,
    pub(crate) count: u32,
}

impl Segment {
    pub(crate) fn owns(&self, user: u64) -> bool {
        user % u64::from(self.count) == u64::from(self.index)
    }
}

impl FromStr for Segment {
    type Err = anyhow::Error;

    /// `i/n` with `1 <= i <= n`.
    fn from_str(s: &str) -> anyhow::Result<Segment> {
        let Some((i, n)) = s.split_once('/') else {
            bail!("expected i/n, e.g. 1/2");
        };
        let (i, n): (u32, u32) = (i.trim().parse()?, n.trim().parse()?);
        if n == 0 || i == 0 || i > n {
            bail!("segment i/n needs 1 <= i <= n");
        }
        Ok(Segment {
            index: i - 1,
            count: n,
        })
    }
}

impl std::fmt::Display for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index + 1, self.count)
    }
}

/// One life of one user: from `start_s` to `stop_s` after the test start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Incarnation {
    pub(crate) user: u64,
    /// How many earlier lives this user index had (spike and stress
    /// profiles stop users and start them again).
    pub(crate) incarnation: u32,
    pub(crate) start_s: f64,
    pub(crate) stop_s: f64,
}

/// Every incarnation of the whole test, ordered by start time.
pub(crate) fn plan(stages: &[Stage]) -> Vec<Incarnation> {
    let mut live: Vec<Incarnation> = Vec::new();
    let mut done: Vec<Incarnation> = Vec::new();
    let mut lives: Vec<u32> = Vec::new();
    let mut rate: Option<f64> = None;
    for stage in stages {
        if stage.spawn_rate.is_some() {
            rate = stage.spawn_rate;
        }
        let from = live.len() as u64;
        let to = stage.users;
        // When the `j`th start (or stop) of this stage is due; `None` past
        // the stage's end.
        let due = |j: u64| {
            let t = match rate {
                Some(r) => stage.start_s + j as f64 / r,
                None => stage.start_s,
            };
            (t < stage.end_s).then_some(t)
        };
        if to > from {
            for j in 0..(to - from) {
                let Some(t) = due(j) else { break };
                let user = from + j;
                if lives.len() <= user as usize {
                    lives.resize(user as usize + 1, 0);
                }
                let incarnation = lives[user as usize];
                lives[user as usize] += 1;
                live.push(Incarnation {
                    user,
                    incarnation,
                    start_s: t,
                    stop_s: f64::INFINITY,
                });
            }
        } else if to < from {
            for j in 0..(from - to) {
                let Some(t) = due(j) else { break };
                let mut inc = live.pop().expect("more live users than the target");
                inc.stop_s = t;
                done.push(inc);
            }
        }
    }
    let end = stages.last().map(|s| s.end_s).unwrap_or(0.0);
    for mut inc in live {
        inc.stop_s = end;
        done.push(inc);
    }
    done.sort_by(|a, b| a.start_s.total_cmp(&b.start_s).then(a.user.cmp(&b.user)));
    done
}

/// How many user indices the test uses (accounts to provision).
pub(crate) fn user_count(plan: &[Incarnation]) -> u64 {
    plan.iter().map(|i| i.user + 1).max().unwrap_or(0)
}

/// Whether user `k` belongs to a share (guardians, deviating riders).
/// Spread evenly over the indices, so any prefix of users has the share
/// to within one user; `phase` decorrelates two shares.
pub(crate) fn in_share(user: u64, share: f64, phase: u64) -> bool {
    if share <= 0.0 {
        return false;
    }
    let a = ((user + phase) as f64 * share).floor();
    let b = ((user + phase + 1) as f64 * share).floor();
    b > a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(name: &str, start: f64, end: f64, users: u64, rate: Option<f64>) -> Stage {
        Stage {
            name: name.into(),
            start_s: start,
            end_s: end,
            users,
            spawn_rate: rate,
        }
    }

    #[test]
    fn step_table_spawns_at_rate_and_holds() {
        let stages = vec![
            stage("a", 0.0, 12.0, 10, Some(1.0)),
            stage("b", 12.0, 30.0, 30, Some(2.0)),
            stage("c", 30.0, 40.0, 30, None),
        ];
        let p = plan(&stages);
        assert_eq!(p.len(), 30);
        assert_eq!(p[9].start_s, 9.0);
        assert_eq!(p[10].start_s, 12.0);
        assert_eq!(p[11].start_s, 12.5);
        assert!(p.iter().all(|i| i.stop_s == 40.0));
    }

    #[test]
    fn spike_stops_last_in_first_out_and_restarts() {
        let stages = vec![
            stage("base", 0.0, 10.0, 2, None),
            stage("spike", 10.0, 20.0, 6, Some(4.0)),
            stage("drop", 20.0, 30.0, 2, Some(4.0)),
            stage("again", 30.0, 40.0, 6, None),
        ];
        let p = plan(&stages);
        let user5: Vec<&Incarnation> = p.iter().filter(|i| i.user == 5).collect();
        assert_eq!(user5.len(), 2);
        assert_eq!(user5[0].stop_s, 20.0);
        assert_eq!(user5[1].incarnation, 1);
        assert_eq!(user_count(&p), 6);
    }

    #[test]
    fn segments_partition_the_users() {
        let stages = vec![stage("a", 0.0, 100.0, 1001, Some(20.0))];
        let p = plan(&stages);
        let segs: Vec<Segment> = (1..=3).map(|i| format!("{i}/3").parse().unwrap()).collect();
        let counts: Vec<usize> = segs
            .iter()
            .map(|s| p.iter().filter(|i| s.owns(i.user)).count())
            .collect();
        assert_eq!(counts.iter().sum::<usize>(), p.len());
        assert_eq!(counts, vec![334, 334, 333]);
        assert!("0/2".parse::<Segment>().is_err());
        assert!("3/2".parse::<Segment>().is_err());
    }

    #[test]
    fn shares_are_exact_over_prefixes() {
        let n = (0..1000).filter(|k| in_share(*k, 0.1, 0)).count();
        assert_eq!(n, 100);
        let n = (0..1000).filter(|k| in_share(*k, 0.02, 7)).count();
        assert_eq!(n, 20);
        assert!(!in_share(3, 0.0, 0));
    }
}
