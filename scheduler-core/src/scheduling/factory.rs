//! How a plugin is made from its `plugins[]` entry: the [`PluginFactory`] every plugin type implements,
//! and the [`BuildContext`] through which plugins share state by producer name (GIE's plugin handle), so
//! neither the scheduler nor a plugin needs another plugin's concrete type.

use super::framework::{PdDecider, Plugin};
use crate::config::params::{json_repr, IgnoredParams, ParamError};
use crate::config::ConfigWarning;
use crate::prefix::PrefixHandle;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// A plugin type: its configuration `type`, its typed parameters, and how to build it from them.
///
/// The registry deserializes an entry's `parameters` into [`Params`](Self::Params) (absent means
/// `Params::default()`; a wrong type or an unknown key is an error naming the key) and passes them to
/// [`build`](Self::build), which checks what serde cannot (ranges, choices) while converting them into
/// the plugin. That is the one place parameters are checked: an invalid value is an error naming its
/// field, never replaced by a default.
///
/// # Adding a scorer: one file and one registry line
///
/// The file, `plugins/scorers/short_queue_scorer.rs`, holds the parameters, the plugin, its factory and
/// its tests:
///
/// ```
/// use scheduler_core::config::params::ParamError;
/// use scheduler_core::plugins::candidates::metrics;
/// use scheduler_core::scheduling::{
///     BuildContext, CycleState, Plugin, PluginFactory, SchedulingContext, Scorer,
/// };
///
/// pub const TYPE: &str = "short-queue-scorer";
///
/// /// `parameters`: serde reads them, so a typo or a wrong type is an error naming the key.
/// #[derive(serde::Deserialize)]
/// #[serde(default, deny_unknown_fields, rename_all = "camelCase")]
/// pub struct Params {
///     /// Waiting requests up to which an endpoint scores 1.
///     pub max_waiting: i64,
/// }
///
/// impl Default for Params {
///     fn default() -> Params {
///         Params { max_waiting: 4 }
///     }
/// }
///
/// /// 1 for endpoints with at most `maxWaiting` waiting requests, 0 for the others and the unscraped.
/// pub struct ShortQueueScorer {
///     max_waiting: u32,
/// }
///
/// impl PluginFactory for ShortQueueScorer {
///     const TYPE: &'static str = TYPE;
///     type Params = Params;
///
///     fn build(params: Params, _: &mut BuildContext<'_>) -> Result<ShortQueueScorer, ParamError> {
///         let max_waiting = u32::try_from(params.max_waiting)
///             .map_err(|_| ParamError::invalid("maxWaiting", "an integer in [0, 4294967295]"))?;
///         Ok(ShortQueueScorer { max_waiting })
///     }
/// }
///
/// impl Plugin for ShortQueueScorer {
///     fn type_name(&self) -> &'static str {
///         TYPE
///     }
///     fn as_scorer(&self) -> Option<&dyn Scorer> {
///         Some(self)
///     }
/// }
///
/// impl Scorer for ShortQueueScorer {
///     fn score(
///         &self,
///         ctx: &SchedulingContext<'_>,
///         _: &mut CycleState,
///         candidates: &[usize],
///         scores: &mut [f64],
///     ) {
///         for (score, &i) in scores.iter_mut().zip(candidates) {
///             let short = metrics(ctx, i).is_some_and(|m| m.waiting <= self.max_waiting);
///             *score = if short { 1.0 } else { 0.0 };
///         }
///     }
/// }
///
/// // The registry line: in `plugins/registry.rs` it is `Entry::of::<ShortQueueScorer>(),` in `BUILTIN`;
/// // an embedder adds its own type to a registry the same way.
/// use scheduler_core::config::EndpointPickerConfig;
/// use scheduler_core::plugins::registry::Registry;
/// use scheduler_core::scheduling::pipeline::Scheduler;
///
/// let registry = Registry::builtin().with::<ShortQueueScorer>();
/// let build = |json: &str| {
///     Scheduler::from_config_with(&EndpointPickerConfig::from_json(json).unwrap(), &registry)
/// };
/// let built = build(r#"{"plugins": [{"type": "short-queue-scorer", "parameters": {"maxWaiting": 8}}]}"#);
/// assert_eq!(built.unwrap().plugin("short-queue-scorer").unwrap().type_name(), TYPE);
/// let err = build(r#"{"plugins": [{"type": "short-queue-scorer", "parameters": {"maxWaiting": -1}}]}"#);
/// let err = err.unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     "plugins[0].parameters.maxWaiting: expected an integer in [0, 4294967295]"
/// );
/// ```
///
/// A plugin that reads state another plugin produces asks the [`BuildContext`] for it by the producer's
/// name, as `prefix-cache-affinity-filter` does for the prefix index of its `prefix-cache-scorer`.
pub trait PluginFactory: Plugin + Sized + 'static {
    /// The configuration `type`, e.g. `queue-scorer`.
    const TYPE: &'static str;

    /// True for plugin types that publish shared state in `build`. They are built before the others, so
    /// a consumer finds its producer wherever the two entries are in the configuration.
    const PRODUCER: bool = false;

    /// True for a producer that may itself read another producer's state (a `prefix-cache-scorer`
    /// reading an `approx-prefix-cache-producer`'s index, or offering its own): built after the other
    /// producers and before the rest, so that chain too holds whatever the order of the entries.
    const READS_PRODUCERS: bool = false;

    /// The entry's `parameters`; `#[serde(default, deny_unknown_fields, rename_all = "camelCase")]` (or
    /// [`NoParams`](crate::config::params::NoParams) for a plugin that takes none).
    type Params: DeserializeOwned;

    /// Checks `params` and builds the plugin. Errors name the parameter (`ParamError::field`).
    fn build(params: Self::Params, ctx: &mut BuildContext<'_>) -> Result<Self, ParamError>;
}

/// What a plugin's [`PluginFactory::build`] may use besides its parameters: its own name, the state
/// plugins share by the name of the plugin that produced it, and a place to leave warnings.
pub struct BuildContext<'a> {
    name: &'a str,
    shared: &'a mut SharedState,
    warnings: Vec<ParamWarning>,
}

/// Something about a plugin's parameters the operator should know although the plugin was built (a
/// parameter accepted and ignored as llm-d ignores it, a deprecated type name). `field` is the key inside
/// `parameters`, as in [`ParamError`] (empty: the whole entry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamWarning {
    pub field: String,
    pub message: String,
}

impl ParamWarning {
    /// The configuration warning for this parameter of the entry whose parameters are at `path`
    /// (`plugins[2].parameters`).
    pub fn at(self, path: &str) -> ConfigWarning {
        let path = if self.field.is_empty() { String::from(path) } else { format!("{path}.{}", self.field) };
        ConfigWarning { path, message: self.message }
    }
}

/// Why [`BuildContext::prefix_index`] found no index to share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LookupError {
    /// No plugin of that name produces one.
    NotProduced,
    /// No producer was named and several plugins produce one.
    Ambiguous,
}

impl<'a> BuildContext<'a> {
    /// The context for building the plugin called `name`, sharing `shared` with the other plugins.
    pub fn new(name: &'a str, shared: &'a mut SharedState) -> BuildContext<'a> {
        BuildContext { name, shared, warnings: Vec::new() }
    }

    /// Records a warning about parameter `field` (empty: the entry as a whole); the scheduler reports
    /// it with the others ([`Scheduler::warnings`](super::pipeline::Scheduler::warnings)).
    pub fn warn(&mut self, field: &str, message: impl Into<String>) {
        self.warnings.push(ParamWarning { field: String::from(field), message: message.into() });
    }

    /// For a type whose llm-d factory never reads its `parameters`: accepts any, and warns about the
    /// keys given so a typo does not pass unnoticed.
    pub fn ignore_params(&mut self, params: &IgnoredParams) {
        if !params.keys.is_empty() {
            let message = format!(
                "{} ignored, as in llm-d (this plugin type reads no parameters)",
                params.keys.join(", ")
            );
            self.warn("", message);
        }
    }

    /// [`ignore_params`](Self::ignore_params) for a plugin that keeps its parameters as JSON (`Null`
    /// when absent); a value that is not an object is ignored too, as llm-d does not look at it.
    pub fn ignore_json(&mut self, params: &Value) {
        match params {
            Value::Null => {}
            Value::Object(map) => {
                self.ignore_params(&IgnoredParams { keys: map.keys().cloned().collect() });
            }
            other => {
                let message = format!(
                    "{} ignored, as in llm-d (this plugin type reads no parameters)",
                    json_repr(other)
                );
                self.warn("", message);
            }
        }
    }

    /// The warnings recorded while building, in order.
    pub fn take_warnings(&mut self) -> Vec<ParamWarning> {
        core::mem::take(&mut self.warnings)
    }

    /// The name of the entry being built (`plugins[].name`, which defaults to the type).
    pub fn name(&self) -> &str {
        self.name
    }

    /// Offers `index` to the other plugins under this plugin's name (consumers such as
    /// `prefix-cache-affinity-filter` share it). The scheduler reaches it too: table seed, records of
    /// other workers' picks.
    pub fn produce_prefix_index(&mut self, index: PrefixHandle) {
        self.shared.add_prefix_index(self.name, index, true);
    }

    /// Registers an index this plugin keeps for itself, so the scheduler reaches it like the others;
    /// it is not offered to consumers.
    pub fn keep_prefix_index(&mut self, index: PrefixHandle) {
        self.shared.add_prefix_index(self.name, index, false);
    }

    /// Offers this plugin as a P/D decider, which profile handlers name in their parameters.
    pub fn produce_pd_decider(&mut self, decider: Rc<dyn PdDecider>) {
        self.shared.deciders.retain(|d| d.owner != self.name);
        self.shared.deciders.push(OwnedDecider { owner: String::from(self.name), decider });
    }

    /// The P/D decider the plugin named `name` offers (`None`: no such plugin, or not a decider).
    pub fn pd_decider(&self, name: &str) -> Option<Rc<dyn PdDecider>> {
        self.shared.deciders.iter().find(|d| d.owner == name).map(|d| Rc::clone(&d.decider))
    }

    /// The prefix index the plugin named `producer` produces; with no name, the only one produced
    /// (`Ok(None)` when no plugin produces one).
    pub fn prefix_index(&self, producer: Option<&str>) -> Result<Option<PrefixHandle>, LookupError> {
        let mut offered = self.shared.prefix.iter().filter(|p| p.offered);
        match producer {
            Some(name) => match offered.find(|p| p.owner == name) {
                Some(p) => Ok(Some(p.index.clone())),
                None => Err(LookupError::NotProduced),
            },
            None => match (offered.next(), offered.next()) {
                (None, _) => Ok(None),
                (Some(p), None) => Ok(Some(p.index.clone())),
                (Some(_), Some(_)) => Err(LookupError::Ambiguous),
            },
        }
    }
}

/// The state plugins share, by the name of the plugin that owns it. Filled while the plugins are built;
/// the scheduler keeps it to reach that state without knowing which plugins hold it. A new kind of
/// shared state is a new field here, with its producer and consumer methods on [`BuildContext`].
#[derive(Debug, Default)]
pub struct SharedState {
    prefix: Vec<OwnedPrefixIndex>,
    deciders: Vec<OwnedDecider>,
}

struct OwnedDecider {
    owner: String,
    decider: Rc<dyn PdDecider>,
}

impl core::fmt::Debug for OwnedDecider {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("OwnedDecider").field("owner", &self.owner).finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct OwnedPrefixIndex {
    owner: String,
    index: PrefixHandle,
    /// Offered to consumers (a producer's), or kept by its plugin.
    offered: bool,
}

impl SharedState {
    fn add_prefix_index(&mut self, owner: &str, index: PrefixHandle, offered: bool) {
        self.prefix.retain(|p| p.owner != owner);
        self.prefix.push(OwnedPrefixIndex { owner: String::from(owner), index, offered });
    }

    /// Every prefix index of the scheduler, once each (consumers share their producer's), in the order
    /// their plugins were built.
    pub fn prefix_indexes(&self) -> impl Iterator<Item = &PrefixHandle> + '_ {
        self.prefix.iter().map(|p| &p.index)
    }

    /// The prefix index owned by the plugin named `owner`.
    pub fn prefix_index(&self, owner: &str) -> Option<&PrefixHandle> {
        self.prefix.iter().find(|p| p.owner == owner).map(|p| &p.index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prefix::PrefixConfig;

    fn handle() -> PrefixHandle {
        PrefixHandle::new(PrefixConfig::default())
    }

    #[test]
    fn consumers_find_producers_by_name_or_as_the_only_one() {
        let mut shared = SharedState::default();
        let probe = BuildContext::new("filter", &mut shared);
        assert_eq!(probe.prefix_index(None).map(|h| h.is_some()), Ok(false), "nothing produced yet");
        assert_eq!(probe.prefix_index(Some("a")).err(), Some(LookupError::NotProduced));

        let a = handle();
        BuildContext::new("a", &mut shared).produce_prefix_index(a.clone());
        BuildContext::new("own", &mut shared).keep_prefix_index(handle());
        let ctx = BuildContext::new("filter", &mut shared);
        assert!(ctx.prefix_index(None).unwrap().unwrap().same_index(&a), "kept indexes are not offered");
        assert!(ctx.prefix_index(Some("a")).unwrap().unwrap().same_index(&a));
        assert_eq!(ctx.prefix_index(Some("own")).err(), Some(LookupError::NotProduced));

        BuildContext::new("b", &mut shared).produce_prefix_index(handle());
        let ctx = BuildContext::new("filter", &mut shared);
        assert_eq!(ctx.prefix_index(None).err(), Some(LookupError::Ambiguous));
        assert!(ctx.prefix_index(Some("a")).unwrap().unwrap().same_index(&a));
        assert_eq!(shared.prefix_indexes().count(), 3, "the scheduler reaches kept indexes too");
        assert!(shared.prefix_index("own").is_some());
    }
}
