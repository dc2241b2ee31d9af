//! An in-memory ECS service and metrics for handler tests.
#![allow(clippy::unwrap_used)]

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::Error;
use crate::backend::{Activity, ActivityMetrics, EcsService, ServiceState, Task};

pub(crate) struct FakeEcs {
    state: Mutex<Option<ServiceState>>,
    tasks: Vec<Task>,
    scale_calls: Mutex<usize>,
}

pub(crate) fn task(arn: &str, ip: Option<&str>, started_secs: u64) -> Task {
    Task {
        arn: arn.into(),
        last_status: "RUNNING".into(),
        public_ip: ip.map(|ip| ip.parse().unwrap()),
        started_at: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(started_secs)),
    }
}

impl FakeEcs {
    pub(crate) fn new(desired: i32, running: i32, pending: i32, tasks: Vec<Task>) -> Self {
        FakeEcs {
            state: Mutex::new(Some(ServiceState {
                desired,
                running,
                pending,
                kill_requested: None,
            })),
            tasks,
            scale_calls: Mutex::new(0),
        }
    }

    pub(crate) fn missing() -> Self {
        FakeEcs {
            state: Mutex::new(None),
            tasks: vec![],
            scale_calls: Mutex::new(0),
        }
    }

    pub(crate) fn desired(&self) -> i32 {
        self.state.lock().unwrap().map_or(0, |s| s.desired)
    }

    pub(crate) fn kill_requested(&self) -> Option<SystemTime> {
        self.state.lock().unwrap().and_then(|s| s.kill_requested)
    }

    pub(crate) fn scale_calls(&self) -> usize {
        *self.scale_calls.lock().unwrap()
    }
}

#[async_trait]
impl EcsService for FakeEcs {
    fn names(&self) -> (&str, &str) {
        ("fluidity", "fluidity-server")
    }

    async fn state(&self) -> Result<Option<ServiceState>, Error> {
        Ok(*self.state.lock().unwrap())
    }

    async fn set_desired(&self, count: i32) -> Result<(), Error> {
        *self.scale_calls.lock().unwrap() += 1;
        if let Some(state) = self.state.lock().unwrap().as_mut() {
            state.desired = count;
        }
        Ok(())
    }

    async fn set_kill_requested(&self, at: Option<SystemTime>) -> Result<(), Error> {
        if let Some(state) = self.state.lock().unwrap().as_mut() {
            state.kill_requested = at;
        }
        Ok(())
    }

    async fn running_tasks(&self) -> Result<Vec<Task>, Error> {
        Ok(self.tasks.clone())
    }
}

pub(crate) struct FakeMetrics(pub(crate) Result<Activity, String>);

#[async_trait]
impl ActivityMetrics for FakeMetrics {
    async fn activity(&self, _lookback: Duration) -> Result<Activity, Error> {
        self.0
            .clone()
            .map_err(|e| Error::backend("reading metrics", e))
    }

    async fn tunnel_counts(&self, _lookback: Duration) -> Result<Vec<(SystemTime, f64)>, Error> {
        Ok(Vec::new())
    }
}

/// Tunnel counts as a server reports them over time: `(unix seconds, open tunnels)`.
pub(crate) struct FakeHistory(pub(crate) Mutex<Vec<(u64, f64)>>);

impl FakeHistory {
    pub(crate) fn new(points: &[(u64, f64)]) -> Self {
        FakeHistory(Mutex::new(points.to_vec()))
    }

    pub(crate) fn report(&self, at: u64, tunnels: f64) {
        self.0.lock().unwrap().push((at, tunnels));
    }
}

#[async_trait]
impl ActivityMetrics for FakeHistory {
    async fn activity(&self, _lookback: Duration) -> Result<Activity, Error> {
        let points = self.0.lock().unwrap();
        let newest = points.iter().max_by_key(|(at, _)| *at);
        Ok(Activity {
            active_tunnels: newest.map(|(_, n)| *n),
            last_activity: newest.map(|(at, _)| SystemTime::UNIX_EPOCH + Duration::from_secs(*at)),
        })
    }

    async fn tunnel_counts(&self, _lookback: Duration) -> Result<Vec<(SystemTime, f64)>, Error> {
        Ok(self
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|(at, n)| (SystemTime::UNIX_EPOCH + Duration::from_secs(*at), *n))
            .collect())
    }
}
